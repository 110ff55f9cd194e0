"""Phase 3, recovery fine-tuning: ``run_train`` (setup -> train -> save), on the phase-2 loop.

The student learns from instruction data (prompt + response through the chat template, loss on
the response tokens by default) with ``ce_weight * CE(gold answer) + kd_weight * KD(teacher)``;
``kd_weight = 0`` is plain SFT. Domains (code / math / chat) are packed separately and mixed by
``domain_weights`` (:mod:`nexus.training.data`). Training, checkpoints, resume, pause/stop and
the metrics log are those of :class:`nexus.distillation.loop.DistillLoop` (phase 3 in the
monitor). Output: ``OUT/model`` (HF dir) + ``OUT/summary.json`` + ``OUT/config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nexus.config import config_hash, save_resolved
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter

log = logging.getLogger(__name__)


def default_student(student: str | None, results_dir: Path) -> str:
    """The configured student, else phase 2's output ``<results>/distill/model``."""
    if student:
        return student
    distilled = Path(results_dir) / "distill" / "model"
    if (distilled / "config.json").is_file():
        return str(distilled)
    raise NexusError(f"no student given and no distilled student at {distilled}: pass --student SPEC")


def load_pair(cfg, results_dir: Path):
    """Teacher, student (fp32, trainable) and the tokenizer; refuses a vocabulary mismatch."""
    from nexus.models import load_model, load_tokenizer

    teacher, _ = load_model(cfg.teacher)
    student, resolved = load_model(default_student(cfg.student, results_dir))
    tokenizer = load_tokenizer(resolved)
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab:
        raise NexusError(
            f"student vocabulary ({s_vocab}) differs from the teacher's ({t_vocab}): KD needs the same vocabulary"
        )
    return teacher, student, tokenizer


def build_data(cfg, tokenizer, teacher):
    """Domain-mixed packed rows (see :mod:`nexus.training.data`)."""
    from nexus.training.data import build_domain_data, load_domain_examples

    grouped = load_domain_examples(
        cfg.data,
        teacher=teacher,
        tokenizer=tokenizer,
        seed=cfg.seed,
        default_domain=cfg.default_domain,
        max_examples=cfg.max_examples,
    )
    data = build_domain_data(
        grouped,
        tokenizer,
        seq_len=cfg.seq_len,
        weights=cfg.domain_weights,
        loss_on=cfg.loss_on,
        heldout_fraction=cfg.heldout_fraction,
        seed=cfg.seed,
    )
    log.info(
        "data: %s examples per domain, mixed as %s, %d train rows x %d tokens",
        data.examples_per_domain,
        {k: round(v, 3) for k, v in data.weights.items()},
        len(data.train),
        data.train.seq_len,
    )
    return data


def run_train(
    config,
    *,
    results_dir: Path = Path("results"),
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Phase 3: fine-tune the student on domain-mixed instruction data; returns the summary."""
    from nexus.distillation.loop import DistillLoop, LiveTeacherSource, LoopSettings
    from nexus.training.config import result_fields

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "train"
    teacher, student, tokenizer = load_pair(config, results_dir)
    data = build_data(config, tokenizer, teacher)
    student.train()
    loop = DistillLoop(
        student,
        tokenizer=tokenizer,
        train=data.train,
        heldout=data.heldout,
        teacher=LiveTeacherSource(teacher) if config.kd_weight > 0 else None,
        settings=LoopSettings.from_config(config),
        out_dir=out,
        run_config=config,
        result_hash=config_hash(result_fields(config)),
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=3,
    )
    summary = loop.fit()
    summary["domain_weights"] = data.weights
    summary["examples_per_domain"] = data.examples_per_domain
    save_resolved(config, out)
    return summary
