"""``DistillConfig``: the phase-2 section of the YAML config (``distill:``), overridden by CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
DISTRIBUTED_MODES = ("auto", "ddp", "fsdp")  # see nexus.distillation.parallel
TEACHER_SHARDING = ("auto", "replicate", "fsdp")

# Fields that do not change the trained weights: a resume may change them freely.
NON_RESULT_FIELDS = frozenset(
    {
        "out",
        "save_every",
        "keep_last",
        "eval_every",
        "eval_max_rows",
        "log_every",
        "max_nan_steps",
        "device",
        "data_cache_dir",
        "teacher_cache_dir",
        "gradient_checkpointing",
        "chunk_size",
        "distributed",
        "teacher_sharding",
    }
)


def check_parallel_fields(cfg: Any) -> None:
    """``distributed`` / ``teacher_sharding`` of a phase config (2, 3 or 4) take known values."""
    if cfg.distributed not in DISTRIBUTED_MODES:
        raise ValueError(
            f"distributed must be one of {', '.join(DISTRIBUTED_MODES)}, not {cfg.distributed!r}"
        )
    if cfg.teacher_sharding not in TEACHER_SHARDING:
        raise ValueError(
            f"teacher_sharding must be one of {', '.join(TEACHER_SHARDING)}, not {cfg.teacher_sharding!r}"
        )


def _help(text: str) -> dict:
    return {"help": text}


def distributed_field() -> Any:
    """The ``distributed`` field of the phase 2, 3 and 4 configs."""
    return field(
        default="auto",
        metadata=_help("auto (FSDP under an accelerate FSDP config, DDP under torchrun) | ddp | fsdp"),
    )


def teacher_sharding_field() -> Any:
    """The ``teacher_sharding`` field of the phase 2, 3 and 4 configs."""
    return field(
        default="auto",
        metadata=_help(
            "live teacher: auto (fsdp when the student is) | replicate (whole per process) | fsdp"
        ),
    )


@dataclass
class DistillConfig:
    # models
    teacher: str = field(
        default="default", metadata=_help("teacher model spec (default, HF dir, GGUF, hub name)")
    )
    student: str | None = field(
        default=None, metadata=_help("student model spec (same vocabulary as the teacher)")
    )
    plan: str | None = field(
        default=None, metadata=_help("student_plan.json from `nexus profile` (keep_layers, anchor_pairs)")
    )
    student_layers: int = field(
        default=20, metadata=_help("without --student/--plan: keep this many evenly spread teacher layers")
    )
    # data
    data: list[str] = field(
        default_factory=lambda: ["builtin"], metadata=_help("data sources: files, dirs, hf:NAME, builtin")
    )
    seq_len: int = field(default=256, metadata=_help("packed sequence length"))
    loss_on: str = field(
        default="all", metadata=_help("score 'all' tokens or only 'response' tokens of chat rows")
    )
    heldout_fraction: float = field(
        default=0.05, metadata=_help("fraction of documents held out for evaluation")
    )
    max_examples: int | None = field(
        default=None, metadata=_help("use at most this many examples (debugging)")
    )
    data_cache_dir: str | None = field(
        default=None, metadata=_help("tokenized-data cache (default: <out>/../data_cache)")
    )
    # optimization
    max_steps: int = field(default=200, metadata=_help("optimizer steps"))
    micro_batch_size: int = field(default=4, metadata=_help("rows per forward pass per process"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    lr: float = field(default=2e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_steps: int = field(default=20, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("cosine decays to lr * min_lr_ratio"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm (0 = off)"))
    seed: int = field(default=0, metadata=_help("seed for data order and initialization"))
    # losses
    kd_kind: str = field(default="forward_kl", metadata=_help("forward_kl | reverse_kl | jsd"))
    jsd_beta: float = field(default=0.5, metadata=_help("generalized JSD mixture weight of the teacher"))
    temperature: float = field(default=1.0, metadata=_help("KD temperature (loss scaled by T^2)"))
    kd_weight: float = field(default=1.0, metadata=_help("weight of the KD loss"))
    ce_weight: float = field(default=0.0, metadata=_help("weight of CE on the data's own tokens"))
    anchor_weight: float = field(default=0.0, metadata=_help("weight of ActivationAnchoringLoss (0 = off)"))
    anchor_metric: str = field(default="cosine", metadata=_help("cosine | mse"))
    anchor_normalize: bool = field(default=False, metadata=_help("RMS-normalize states before MSE"))
    anchor_pairs: list[list[int]] | None = field(
        default=None,
        metadata=_help("[[student_layer, teacher_layer], ...]; default: the plan's, or 4 evenly spread"),
    )
    # teacher cache
    cache_teacher: bool = field(
        default=False, metadata=_help("run the teacher once, store top-k, train from the cache")
    )
    topk: int = field(default=512, metadata=_help("teacher logits kept per token in the cache"))
    teacher_cache_dir: str | None = field(
        default=None, metadata=_help("teacher cache root (default: <out>/../teacher_cache)")
    )
    # speed / precision
    precision: str = field(default="auto", metadata=_help("auto | bf16 | fp32"))
    chunk_size: int = field(
        default=1024, metadata=_help("tokens per loss chunk (logits never held for the whole batch)")
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute student activations in backward")
    )
    device: str | None = field(default=None, metadata=_help("cpu, cuda, cuda:1 (default: cuda if present)"))
    distributed: str = distributed_field()
    teacher_sharding: str = teacher_sharding_field()
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
    out: str | None = field(default=None, metadata=_help("output directory (default: <results>/distill)"))

    def __post_init__(self) -> None:
        if self.kd_kind not in DIVERGENCES:
            raise ValueError(f"kd_kind must be one of {', '.join(DIVERGENCES)}, not {self.kd_kind!r}")
        if self.kd_kind == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {self.jsd_beta}")
        if self.anchor_metric not in ("cosine", "mse"):
            raise ValueError(f"anchor_metric must be cosine or mse, not {self.anchor_metric!r}")
        if self.loss_on not in ("all", "response"):
            raise ValueError(f"loss_on must be all or response, not {self.loss_on!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        check_parallel_fields(self)
        for name in (
            "max_steps",
            "micro_batch_size",
            "grad_accum",
            "seq_len",
            "topk",
            "chunk_size",
            "keep_last",
            "save_every",
            "log_every",
            "eval_max_rows",
            "student_layers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if min(self.kd_weight, self.ce_weight, self.anchor_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        if self.kd_weight == 0 and self.ce_weight == 0 and self.anchor_weight == 0:
            raise ValueError("all loss weights are 0: nothing to train on")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.anchor_pairs is not None and any(len(p) != 2 for p in self.anchor_pairs):
            raise ValueError("anchor_pairs entries must be [student_layer, teacher_layer]")
        if self.student and self.plan:
            raise ValueError("give --student or --plan, not both")
