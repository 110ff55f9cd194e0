"""``RouterConfig``: phase 4, the ``router:`` section of the YAML config.

It extends :class:`nexus.training.config.TrainConfig` (same data, optimizer and KD fields) with
the expert layout and the router losses; see docs/router.md for their exact definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.training.config import TrainConfig


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class RouterConfig(TrainConfig):
    # phase 4 defaults: pure KD on every token (the router must learn to route prompts too)
    loss_on: str = field(default="all", metadata=_help("score 'all' tokens or only 'response' tokens"))
    kd_weight: float = field(default=1.0, metadata=_help("weight of KD from the teacher"))
    ce_weight: float = field(default=0.0, metadata=_help("weight of CE on the data's tokens"))
    # experts
    num_experts: int = field(default=3, metadata=_help("experts per MoE layer (3: code, math, chat)"))
    top_k: int = field(default=1, metadata=_help("experts used per token"))
    mode: str = field(default="split", metadata=_help("split: experts of 1/E width; copy: sparse upcycling"))
    partition: str = field(
        default="coactivation", metadata=_help("split neurons by 'coactivation' or 'even'")
    )
    expert_layers: str = field(
        default="all", metadata=_help("'all', 'critical' (profile plan's critical layers) or indices '0,3,5'")
    )
    plan: str | None = field(
        default=None, metadata=_help("student_plan.json of `nexus profile` (for 'critical')")
    )
    moe_architecture: str = field(
        default="auto", metadata=_help("auto (Llama->mixtral, Qwen2->qwen2_moe) | ...")
    )
    router_init: str = field(
        default="fit", metadata=_help("fit (least squares on calibration data) | random")
    )
    calibration_tokens: int = field(
        default=4096, metadata=_help("tokens used to group neurons and fit routers")
    )
    # router losses
    lb_weight: float = field(default=0.01, metadata=_help("Switch load-balancing loss coefficient"))
    z_weight: float = field(default=0.001, metadata=_help("router z-loss coefficient"))
    beta_entropy: float = field(default=0.1, metadata=_help("reward for entropy of the batch-mean routing"))
    beta_sharpness: float = field(default=0.0, metadata=_help("penalty on per-token routing entropy"))
    domain_warmup_steps: int = field(
        default=0, metadata=_help("steps of router CE towards the domain's expert")
    )
    domain_weight: float = field(default=1.0, metadata=_help("weight of that warm-up CE"))
    collapse_threshold: float = field(
        default=0.9, metadata=_help("warn when one expert takes more than this share")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("split", "copy"):
            raise ValueError(f"mode must be split or copy, not {self.mode!r}")
        if self.partition not in ("coactivation", "even"):
            raise ValueError(f"partition must be coactivation or even, not {self.partition!r}")
        if self.router_init not in ("fit", "random"):
            raise ValueError(f"router_init must be fit or random, not {self.router_init!r}")
        if self.num_experts < 2:
            raise ValueError(f"expert count must be at least 2, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"top_k must be between 1 and num_experts ({self.num_experts}), got {self.top_k}"
            )
        for name in ("lb_weight", "z_weight", "beta_entropy", "beta_sharpness", "domain_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative")
        if not 0 < self.collapse_threshold <= 1:
            raise ValueError("collapse_threshold must be in (0, 1]")
        if self.calibration_tokens < 1 or self.domain_warmup_steps < 0:
            raise ValueError("calibration_tokens must be >= 1 and domain_warmup_steps >= 0")
        if self.expert_layers not in ("all", "critical"):
            try:
                [int(x) for x in self.expert_layers.split(",") if x.strip()]
            except ValueError:
                raise ValueError(
                    f"expert_layers must be all, critical or indices like 0,3,5: {self.expert_layers!r}"
                ) from None
