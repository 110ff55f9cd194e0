"""``TrainSettings``: the one definition of the engine's optimiser, schedule, loss, precision,
parallelism and bookkeeping knobs, shared by phases 2 (distill), 3 (train) and 4 (router).

Each phase config *is* a ``TrainSettings`` (a dataclass base, so the keys stay flat in the YAML
sections and ``--set`` paths the usage guide documents: ``distill.lr``, not ``distill.optim.lr``)
and adds its own model/data fields. A phase that needs another default for a shared knob
re-declares it with :func:`phase_default`, which keeps the help text of this file; today's
per-phase defaults (kept so the same YAML trains the same weights as before):

=============== ======= ===== ======
field           distill train router
=============== ======= ===== ======
max_steps       200     100   100
lr              2e-4    1e-4  1e-4
warmup_steps    20      10    10
kd_weight       1.0     0.5   1.0
ce_weight       0.0     0.5   0.0
=============== ======= ===== ======

Choice fields are typed ``Literal[...]``: the YAML loader and the generated CLI flags
(:mod:`nexus.cli_flags`) read their choices from the annotation, and ``__post_init__`` checks
them for configs built in code.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from nexus.config import config_hash, to_dict

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]  # see nexus.trainer.divergence
DIVERGENCES: tuple[str, ...] = typing.get_args(Divergence)
Precision = Literal["auto", "bf16", "fp32"]
DistributedMode = Literal["auto", "ddp", "fsdp"]  # see nexus.trainer.parallel
TeacherSharding = Literal["auto", "replicate", "fsdp"]
DISTRIBUTED_MODES: tuple[str, ...] = typing.get_args(DistributedMode)
TEACHER_SHARDING: tuple[str, ...] = typing.get_args(TeacherSharding)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainSettings:
    """Optimiser (AdamW), schedule (linear warm-up, cosine decay), loss weights, precision,
    parallelism and bookkeeping of :class:`nexus.trainer.loop.Trainer`."""

    # optimisation
    max_steps: int = field(default=100, metadata=_help("optimizer steps"))
    micro_batch_size: int = field(
        default=4, metadata={"help": "rows per forward pass per process", "flag": "--batch-size"}
    )
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_steps: int = field(default=10, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("cosine decays to lr * min_lr_ratio"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm (0 = off)"))
    seed: int = field(default=0, metadata=_help("seed for data mixing, order and initialization"))
    # losses
    kd_kind: Divergence = field(default="forward_kl", metadata={"help": "KD divergence", "flag": "--kd"})
    jsd_beta: float = field(default=0.5, metadata=_help("generalized JSD mixture weight of the teacher"))
    temperature: float = field(default=1.0, metadata=_help("KD temperature (loss scaled by T^2)"))
    kd_weight: float = field(default=1.0, metadata=_help("weight of KD from the teacher (0 = no teacher)"))
    ce_weight: float = field(default=0.0, metadata=_help("weight of CE on the data's own tokens"))
    gold_weight: float | None = field(
        default=None,
        metadata=_help(
            "rows whose own answer is the target (the grounded RAG rows): CE weight on their tokens, "
            "no KD (default: scored like the other rows)"
        ),
    )
    # speed / precision / parallelism
    precision: Precision = field(
        default="auto", metadata=_help("training precision (auto: bf16 where supported)")
    )
    chunk_size: int = field(
        default=1024, metadata=_help("tokens per loss chunk (logits never held for the whole batch)")
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute student activations in backward")
    )
    device: str | None = field(default=None, metadata=_help("cpu, cuda, cuda:1 (default: cuda if present)"))
    distributed: DistributedMode = field(
        default="auto",
        metadata=_help(
            "multi-process mode (auto: FSDP under an accelerate FSDP config, else DDP under torchrun)"
        ),
    )
    teacher_sharding: TeacherSharding = field(
        default="auto",
        metadata=_help(
            "live teacher: whole on every process or FSDP-sharded (auto: sharded when the student is)"
        ),
    )
    # bookkeeping
    eval_every: int = field(
        default=50, metadata=_help("evaluate on the held-out rows every N steps (0 = end only)")
    )
    eval_max_rows: int = field(default=32, metadata=_help("held-out rows used per evaluation"))
    save_every: int = field(default=50, metadata=_help("checkpoint every N steps"))
    keep_last: int = field(default=2, metadata=_help("checkpoints kept"))
    log_every: int = field(default=1, metadata=_help("write metrics every N steps"))
    max_nan_steps: int = field(
        default=10, metadata=_help("stop with an error after this many non-finite steps")
    )

    # Fields that do not change the trained weights: a resume may change them freely.
    non_result_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "out",
            "save_every",
            "keep_last",
            "eval_every",
            "eval_max_rows",
            "log_every",
            "max_nan_steps",
            "device",
            "gradient_checkpointing",
            "chunk_size",
            "distributed",
            "teacher_sharding",
        }
    )
    _at_least_one: ClassVar[tuple[str, ...]] = (
        "max_steps",
        "micro_batch_size",
        "grad_accum",
        "chunk_size",
        "keep_last",
        "save_every",
        "log_every",
        "eval_max_rows",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in self._at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.kd_kind == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {self.jsd_beta}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if min(self.kd_weight, self.ce_weight, self.gold_weight or 0.0) < 0:
            raise ValueError("loss weights must be non-negative")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("kd_weight and ce_weight are both 0: there is no loss to train on")

    def result_hash(self) -> str:
        """Hash of the fields that change the trained weights (a resume refuses a mismatch).
        ``gold_weight`` counts only when set, so runs from before it existed keep their hash."""
        values = to_dict(self)
        if values.get("gold_weight") is None:
            values.pop("gold_weight", None)
        return config_hash({k: v for k, v in values.items() if k not in self.non_result_fields})


def phase_default(name: str, default: Any) -> Any:
    """A phase's own default for the :class:`TrainSettings` field ``name`` (same help text)."""
    base = {f.name: f for f in dataclasses.fields(TrainSettings)}[name]
    return field(default=default, metadata=base.metadata)


def check_choices(cfg: Any) -> None:
    """Every ``Literal[...]`` field of the dataclass ``cfg`` holds one of its choices."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Literal:
            allowed = typing.get_args(tp)
            value = getattr(cfg, f.name)
            if value not in allowed:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
