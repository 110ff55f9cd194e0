"""``TrainConfig``: phase 3 (recovery fine-tuning), the ``train:`` section of the YAML config.

A :class:`~nexus.trainer.finetune.FineTuneConfig` (teacher/student, domain-mixed data, and the
engine's :class:`~nexus.trainer.settings.TrainSettings`) with phase 3's loss mix: CE on the gold
answers and KD from the teacher, half each by default (``kd_weight: 0`` is plain SFT); gold rows
(the grounded RAG rows, whose answer the teacher does not give) by CE on their answer alone
(``gold_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.trainer.finetune import FineTuneConfig
from nexus.trainer.settings import phase_default


@dataclass
class TrainConfig(FineTuneConfig):
    kd_weight: float = phase_default("kd_weight", 0.5)
    ce_weight: float = phase_default("ce_weight", 0.5)
    gold_weight: float | None = phase_default("gold_weight", 1.0)
    out: str | None = field(default=None, metadata={"help": "output directory (default: <results>/train)"})
