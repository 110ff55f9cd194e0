"""Phases 2 (distill) and 3 (train) for a vision-language student, on the text phases' engine.

The student is the teacher with a depth-pruned language tower (phase 1's plan, or
``student_layers`` evenly spread; :func:`nexus.models.build_student` cuts the language tower of
a VLM like an LM's decoder), its vision tower and projector copied and frozen unless
``train_vision`` / ``train_projector``. The step is :class:`nexus.trainer.loop.Trainer`'s:
logit KD on the answer tokens from the live teacher, which sees the same pictures (the batch's
``pixel_values`` reach both forwards), CE on the answers (phase 3), and
``ActivationAnchoringLoss`` at the plan's critical layer pairs; checkpoints, resume, the status
line and pause/stop flags come with it. At the end the student's accuracy on held-out
questions is measured (multiple choice and exact match).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter
from nexus.multimodal.config import VisionTrainConfig

log = logging.getLogger(__name__)


def _student(config: VisionTrainConfig, teacher) -> tuple[Any, list[int] | None, list[list[int]], str]:
    """(student, kept teacher layers or None, the plan's anchor pairs, description)."""
    from nexus.distillation.student import evenly_spread_layers, read_plan
    from nexus.models import build_student, decoder_layers
    from nexus.multimodal.vlm import load_vlm

    n_teacher = len(decoder_layers(teacher))
    if config.student:
        student, _, _ = load_vlm(config.student)
        return student, None, [], str(config.student)
    if config.plan:
        plan = read_plan(config.plan)
        keep, pairs = plan["keep_layers"], plan["anchor_pairs"]
        description = f"plan {config.plan}: {len(keep)} of {n_teacher} language layers"
    else:
        keep, pairs = evenly_spread_layers(n_teacher, config.student_layers), []
        description = f"{len(keep)} of {n_teacher} language layers, evenly spread"
    return build_student(teacher, keep, teacher_name=config.teacher), keep, pairs, description


def freeze_vision(student, config: VisionTrainConfig) -> None:
    """Freeze the vision side (everything outside the language tower and the LM head: the
    vision encoder and the projector, wherever the family keeps them) unless ``train_vision`` /
    ``train_projector``."""
    from nexus.models import decoder_stack
    from nexus.multimodal.vlm import vision_parts

    language = {id(p) for p in decoder_stack(student).parameters()}
    language |= {id(p) for p in student.get_output_embeddings().parameters()}
    for p in student.parameters():
        if id(p) not in language:
            p.requires_grad_(False)
    parts = vision_parts(student)
    for name, part, train in (
        ("vision tower", "vision", config.train_vision),
        ("projector", "projector", config.train_projector),
    ):
        if not train:
            continue
        if part not in parts:
            raise NexusError(f"{type(student).__name__} has no {name} that Nexus can find to train")
        for p in parts[part].parameters():
            p.requires_grad_(True)


def live_teacher(teacher, config: VisionTrainConfig, device, *, layers: list[int]):
    """The teacher run on each batch, in bfloat16 when the phase trains in bf16 on ``device``;
    ``layers``: the teacher layers whose states anchoring reads."""
    from nexus.hardware import resolve_precision
    from nexus.trainer.teacher import LiveTeacherSource

    bf16 = resolve_precision(config.precision, device) == "bf16"
    return LiveTeacherSource(teacher, layers=layers, dtype=torch.bfloat16 if bf16 else torch.float32)


def record_accuracy(
    summary: dict[str, Any], student, processor, config: VisionTrainConfig, out: Path
) -> None:
    """After a completed run: the student's accuracy on the held-out questions to
    ``out/student_accuracy.json`` (every row) and ``summary["accuracy"]`` (the totals)."""
    from nexus.multimodal.data import accuracy_examples
    from nexus.multimodal.vlm import evaluate_accuracy
    from nexus.utils import atomic_write_json

    if summary["status"] != "Completed":
        return
    student.eval()
    accuracy = evaluate_accuracy(student, processor, accuracy_examples(config))
    atomic_write_json(out / "student_accuracy.json", accuracy)
    summary["accuracy"] = {k: accuracy[k] for k in ("n", "multiple_choice", "exact_match")}


def run_vision_training(
    config: VisionTrainConfig,
    *,
    results_dir: Path,
    key: str,
    phase: int,
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Train the student; writes ``<out>/model`` (student + processor), metrics, checkpoints,
    ``summary.json``; returns the summary."""
    from nexus.distillation.student import default_anchor_pairs
    from nexus.hardware import pick_device, resolve_precision
    from nexus.models import count_parameters, decoder_layers
    from nexus.multimodal.data import training_examples
    from nexus.multimodal.rows import encode_rows
    from nexus.multimodal.vlm import load_vlm
    from nexus.trainer.anchoring import ActivationAnchoringLoss, check_anchor_pairs
    from nexus.trainer.loop import Trainer
    from nexus.utils import atomic_write_json

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / key
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    teacher, processor, _ = load_vlm(config.teacher)
    student, keep, plan_pairs, description = _student(config, teacher)
    student.float()
    freeze_vision(student, config)
    n_teacher, n_student = len(decoder_layers(teacher)), len(decoder_layers(student))

    anchoring = None
    if config.anchor_weight > 0:
        pairs = config.anchor_pairs or plan_pairs or default_anchor_pairs(n_student, n_teacher, keep)
        check_anchor_pairs(pairs, n_student, n_teacher)
        hidden = (student.config.get_text_config().hidden_size, teacher.config.get_text_config().hidden_size)
        anchoring = ActivationAnchoringLoss(
            pairs, student_hidden=hidden[0], teacher_hidden=hidden[1], metric=config.anchor_metric
        )

    train_examples, heldout_examples = training_examples(config)
    train_rows = encode_rows(processor, train_examples)
    heldout_rows = encode_rows(processor, heldout_examples) if heldout_examples else None
    log.info(
        "data: %d training rows, %d held-out rows (%s)", len(train_rows), len(heldout_examples), config.data
    )
    uses_teacher = config.kd_weight > 0 or anchoring is not None
    teacher_source = (
        live_teacher(
            teacher, config, device, layers=anchoring.teacher_layers if anchoring is not None else []
        )
        if uses_teacher
        else None
    )
    trainer = Trainer.for_phase(
        config,
        student,
        tokenizer=processor,  # saved with every checkpoint and the final model
        train=train_rows,
        heldout=heldout_rows,
        teacher=teacher_source,
        out_dir=out,
        anchoring=anchoring,
        anchor_weight=config.anchor_weight,
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=phase,
    )
    summary = trainer.fit()
    record_accuracy(summary, student, processor, config, out)
    summary.update(
        {
            "teacher": config.teacher,
            "student": description,
            "student_layers": n_student,
            "keep_layers": keep,
            "anchor_pairs": anchoring.pairs if anchoring is not None else None,
            "student_parameters": count_parameters(student),
            "trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "precision": precision,
            "out": str(out),
        }
    )
    atomic_write_json(out / "summary.json", summary)
    return summary
