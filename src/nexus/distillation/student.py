"""Phase 2's student: which teacher layers it keeps and which layer pairs anchoring ties.

The student is the teacher depth-pruned to ``keep_layers`` (from ``nexus profile``'s plan, or
``student_layers`` evenly spread), or any HF model of the teacher's vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.errors import NexusError
from nexus.models.depth import depth_in_layers


def evenly_spread_layers(num_layers: int, keep: int | float) -> list[int]:
    """``keep`` layer indices (a count, or a share of ``num_layers``) spread evenly over
    ``0..num_layers-1``, first and last included."""
    keep = depth_in_layers(keep, num_layers)
    if keep == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def read_plan(path: str | Path) -> dict[str, Any]:
    """The few keys of a ``student_plan.json`` this phase uses (keep_layers, anchor_pairs)."""
    path = Path(path)
    if not path.is_file():
        raise NexusError(f"student plan not found: {path}")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NexusError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("keep_layers"), list):
        raise NexusError(f"{path}: a student plan needs a 'keep_layers' list")
    pairs = plan.get("anchor_pairs") or []
    if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        raise NexusError(f"{path}: 'anchor_pairs' must be a list of [student_layer, teacher_layer]")
    return {"keep_layers": plan["keep_layers"], "anchor_pairs": [list(map(int, p)) for p in pairs]}


@dataclass
class PrunedStudent:
    """Phase 2's initial student before any training: the teacher cut to ``keep_layers``."""

    model: Any
    keep_layers: list[int]
    anchor_pairs: list[list[int]]  # the plan's [student_layer, teacher_layer] pairs ([] without a plan)
    description: str


def pruned_student(
    teacher, *, teacher_name: str, plan: str | Path | None = None, student_layers: int | None = None
) -> PrunedStudent:
    """The teacher cut to the plan's ``keep_layers`` (``plan``, a ``student_plan.json``), else to
    ``student_layers`` evenly spread: phase 2's starting point, and the retention report's
    "untrained plan student" (one function, so the two cannot drift apart)."""
    from nexus.models import build_student, decoder_layers

    n_teacher = len(decoder_layers(teacher))
    pairs: list[list[int]] = []
    if plan:
        read = read_plan(plan)
        keep, pairs = read["keep_layers"], read["anchor_pairs"]
        description = f"plan {plan}: {len(keep)} of {n_teacher} layers"
    elif student_layers is not None:
        keep = evenly_spread_layers(n_teacher, student_layers)
        description = f"{len(keep)} of {n_teacher} teacher layers, evenly spread"
    else:
        raise NexusError("a pruned student needs a plan or a number of layers")
    model = build_student(teacher, keep, teacher_name=teacher_name)
    return PrunedStudent(model, keep, pairs, description)


def default_anchor_pairs(
    student_layers: int, teacher_layers: int, keep: list[int] | None, n_pairs: int = 4
) -> list[list[int]]:
    """``n_pairs`` student layers spread over the depth, each with its teacher counterpart
    (the layer it was copied from, else the same relative depth)."""
    chosen = evenly_spread_layers(student_layers, min(n_pairs, student_layers))
    if keep is not None:
        return [[s, keep[s]] for s in chosen]
    return [[s, round((s + 1) * teacher_layers / student_layers) - 1] for s in chosen]


def same_vocab(teacher, teacher_tok, student, student_tok) -> bool:
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    return t_vocab == s_vocab and teacher_tok.get_vocab() == student_tok.get_vocab()


def check_same_vocab(teacher, teacher_tok, student, student_tok, student_spec: str) -> None:
    if not same_vocab(teacher, teacher_tok, student, student_tok):
        t_vocab = teacher.get_output_embeddings().weight.shape[0]
        s_vocab = student.get_output_embeddings().weight.shape[0]
        raise NexusError(
            f"teacher and student tokenizers differ ({t_vocab} vs {s_vocab} tokens, student {student_spec}); "
            "use --cross-tokenizer uld|align"
        )
