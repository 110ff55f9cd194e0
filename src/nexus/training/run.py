"""Phase 3, recovery fine-tuning: ``run_train``, the recipe (setup -> fit -> save).

The student learns from instruction data (prompt + response through the chat template, loss on
the response tokens by default) with ``ce_weight * CE(gold answer) + kd_weight * KD(teacher)``;
``kd_weight = 0`` is plain SFT. Domains (code / math / chat) are packed separately and mixed by
``domain_weights`` (:mod:`nexus.data.domains`). Training, checkpoints, resume, pause/stop and
the metrics log are those of :class:`nexus.trainer.loop.Trainer` (phase 3 in the monitor).
Output: ``OUT/model`` (HF dir) + ``OUT/summary.json`` + ``OUT/config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nexus.config import save_resolved
from nexus.monitor import Flags, StatusPrinter
from nexus.training.config import TrainConfig

log = logging.getLogger(__name__)


def run_train(
    config: TrainConfig,
    *,
    results_dir: Path = Path("results"),
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Phase 3: fine-tune the student on domain-mixed instruction data; returns the summary."""
    from nexus.models import student_save_dtype
    from nexus.trainer.finetune import build_data, load_pair
    from nexus.trainer.loop import Trainer
    from nexus.trainer.teacher import LiveTeacherSource
    from nexus.utils import atomic_write_json

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "train"
    # setup models -> setup data -> setup teacher
    teacher, student, tokenizer = load_pair(config, results_dir)
    data = build_data(config, tokenizer, teacher)
    student.train()
    trainer = Trainer.for_phase(
        config,
        student,
        tokenizer=tokenizer,
        train=data.train,
        heldout=data.heldout,
        teacher=LiveTeacherSource(teacher) if config.kd_weight > 0 else None,
        out_dir=out,
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=3,
        save_dtype=student_save_dtype(config.teacher),
    )
    # fit -> save
    summary = trainer.fit()
    summary["domain_weights"] = data.weights
    summary["examples_per_domain"] = data.examples_per_domain
    if trainer.dist.is_main:
        atomic_write_json(out / "summary.json", summary)
        save_resolved(config, out)
    return summary
