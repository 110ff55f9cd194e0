"""``RouterConfig``: phase 4, the ``router:`` section of the YAML config.

A :class:`~nexus.trainer.finetune.FineTuneConfig` (same models, data, optimiser and KD fields as
phase 3; pure KD on every token by default) plus :class:`RouterSettings`, the expert layout and
the router losses (the multimodal router phase has the same); see
docs/router.md for their exact definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nexus.trainer.finetune import FineTuneConfig


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class RouterSettings:
    """The expert layout and the router losses, shared by the text router (:class:`RouterConfig`)
    and the multimodal one (:class:`nexus.multimodal.config.VisionRouterConfig`)."""

    num_experts: int = field(
        default=3, metadata={"help": "experts per MoE layer (3: code, math, chat)", "flag": "--experts"}
    )
    top_k: int = field(default=1, metadata=_help("experts used per token"))
    mode: Literal["split", "copy"] = field(
        default="copy",
        metadata=_help(
            "copy: sparse upcycling, exactly the dense student at step 0; split: experts of 1/E width"
        ),
    )
    partition: Literal["coactivation", "even"] = field(
        default="coactivation", metadata=_help("split neurons by 'coactivation' or 'even'")
    )
    expert_layers: str = field(
        default="all", metadata=_help("'all', 'critical' (profile plan's critical layers) or indices '0,3,5'")
    )
    moe_architecture: str = field(
        default="auto", metadata=_help("auto (Llama->mixtral, Qwen2->qwen2_moe) | ...")
    )
    router_init: Literal["fit", "random"] = field(
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

    def check_router_settings(self) -> None:
        """Raise ValueError on an impossible layout or a negative coefficient (each config's
        ``__post_init__`` calls it)."""
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


@dataclass
class RouterConfig(FineTuneConfig, RouterSettings):
    # phase 4 default: KD on every token (the router must learn to route prompts too)
    loss_on: Literal["all", "response"] = field(
        default="all", metadata=_help("score 'all' tokens or only 'response' tokens")
    )
    out: str | None = field(default=None, metadata=_help("output directory (default: <results>/router)"))
    plan: str | None = field(
        default=None, metadata=_help("student_plan.json of `nexus profile` (for 'critical')")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_router_settings()
