"""``TrainConfig``: phase 3 (recovery fine-tuning), the ``train:`` section of the YAML config."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from nexus.data.formats import DOMAINS
from nexus.distillation.config import check_parallel_fields, distributed_field, teacher_sharding_field
from nexus.distillation.losses import DIVERGENCES

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
        "gradient_checkpointing",
        "chunk_size",
        "collapse_threshold",
        "distributed",
        "teacher_sharding",
    }
)


def _help(text: str) -> dict:
    return {"help": text}


def _default_weights() -> dict[str, float]:
    return {d: 1.0 for d in DOMAINS}


@dataclass
class TrainConfig:
    # models
    teacher: str = field(default="default", metadata=_help("teacher model spec (KD targets)"))
    student: str | None = field(
        default=None, metadata=_help("student model spec; default: <results>/distill/model from phase 2")
    )
    # data
    data: list[str] = field(
        default_factory=lambda: ["builtin"], metadata=_help("data sources: files, dirs, hf:NAME, builtin")
    )
    domain_weights: dict[str, float] = field(
        default_factory=_default_weights, metadata=_help("sampling weight per domain (code, math, chat)")
    )
    default_domain: str = field(default="chat", metadata=_help("domain of rows that carry no domain tag"))
    seq_len: int = field(default=256, metadata=_help("packed sequence length"))
    loss_on: str = field(default="response", metadata=_help("train on 'response' tokens only, or 'all'"))
    heldout_fraction: float = field(default=0.05, metadata=_help("fraction of documents held out per domain"))
    max_examples: int | None = field(
        default=None, metadata=_help("use at most this many examples (even per domain)")
    )
    # optimization
    max_steps: int = field(default=100, metadata=_help("optimizer steps"))
    micro_batch_size: int = field(default=4, metadata=_help("rows per forward pass per process"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_steps: int = field(default=10, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("cosine decays to lr * min_lr_ratio"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm (0 = off)"))
    seed: int = field(default=0, metadata=_help("seed for data mixing, order and initialization"))
    # losses: CE on the gold answer mixed with KD from the teacher
    kd_kind: str = field(default="forward_kl", metadata=_help("forward_kl | reverse_kl | jsd"))
    jsd_beta: float = field(default=0.5, metadata=_help("generalized JSD mixture weight of the teacher"))
    temperature: float = field(default=1.0, metadata=_help("KD temperature (loss scaled by T^2)"))
    kd_weight: float = field(default=0.5, metadata=_help("weight of KD from the teacher (0 = plain SFT)"))
    ce_weight: float = field(default=0.5, metadata=_help("weight of CE on the gold answers"))
    # speed / precision
    precision: str = field(default="auto", metadata=_help("auto | bf16 | fp32"))
    chunk_size: int = field(default=1024, metadata=_help("tokens per loss chunk"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("recompute activations in backward"))
    device: str | None = field(default=None, metadata=_help("cpu, cuda, cuda:1 (default: cuda if present)"))
    distributed: str = distributed_field()
    teacher_sharding: str = teacher_sharding_field()
    # bookkeeping
    eval_every: int = field(
        default=50, metadata=_help("evaluate on held-out rows every N steps (0 = end only)")
    )
    eval_max_rows: int = field(default=32, metadata=_help("held-out rows used per evaluation"))
    save_every: int = field(default=50, metadata=_help("checkpoint every N steps"))
    keep_last: int = field(default=2, metadata=_help("checkpoints kept"))
    log_every: int = field(default=1, metadata=_help("write metrics every N steps"))
    max_nan_steps: int = field(
        default=10, metadata=_help("stop with an error after this many non-finite steps")
    )
    out: str | None = field(default=None, metadata=_help("output directory (default: <results>/train)"))

    def __post_init__(self) -> None:
        if self.kd_kind not in DIVERGENCES:
            raise ValueError(f"kd_kind must be one of {', '.join(DIVERGENCES)}, not {self.kd_kind!r}")
        if self.loss_on not in ("all", "response"):
            raise ValueError(f"loss_on must be all or response, not {self.loss_on!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.default_domain not in DOMAINS:
            raise ValueError(
                f"default_domain must be one of {', '.join(DOMAINS)}, not {self.default_domain!r}"
            )
        unknown = [d for d in self.domain_weights if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown domain '{unknown[0]}' in domain_weights (known: {', '.join(DOMAINS)})")
        if any(w < 0 for w in self.domain_weights.values()):
            raise ValueError("domain weights must be non-negative")
        if not any(w > 0 for w in self.domain_weights.values()):
            raise ValueError("domain weights are all zero: at least one domain must have a positive weight")
        check_parallel_fields(self)
        for name in (
            "max_steps",
            "micro_batch_size",
            "grad_accum",
            "seq_len",
            "chunk_size",
            "keep_last",
            "save_every",
            "log_every",
            "eval_max_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be positive")
        if min(self.kd_weight, self.ce_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("kd_weight and ce_weight are both 0: nothing to train on")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


def result_fields(cfg) -> dict:
    """The config values that change the trained weights (hashed to refuse a mismatched resume)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in NON_RESULT_FIELDS}
