"""Typed configs of the multimodal pipeline's phases (sections of ``configs/multimodal*.yaml``).

The training phases are :class:`~nexus.trainer.settings.TrainSettings` like the text phases
(same optimiser, loss, precision and bookkeeping keys), plus the image-text data and what of the
vision side trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nexus.profiling.config import PlanConfig
from nexus.router.config import RouterSettings
from nexus.trainer.settings import TrainSettings, phase_default


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class VisionDataSettings:
    """Where the image-text rows come from, shared by every multimodal phase."""

    data: str = field(
        default="synthetic",
        metadata=_help(
            "'synthetic' (rendered offline), a JSONL / folder of {image, prompt, response} rows, "
            "or hf:NAME[:SPLIT] (a Hugging Face dataset; needs 'datasets')"
        ),
    )
    image_size: int = field(default=64, metadata=_help("side of the synthetic pictures, in pixels"))
    eval_rows: int = field(
        default=100,
        metadata=_help("held-out questions the accuracy (multiple choice, exact match) is measured on"),
    )


@dataclass
class VisionProfileConfig(VisionDataSettings):
    """Phase 1: layer sensitivity of the language tower on image-conditioned probes."""

    model: str = field(default="default", metadata=_help("the vision-language teacher"))
    seed: int = field(default=0, metadata=_help("probe choice"))
    num_probes: int = field(default=20, metadata=_help("probe questions per capability"))
    perturbation: Literal["removal", "noise", "attention", "mlp"] = field(
        default="removal", metadata=_help("what is done to each layer")
    )
    noise_scale: float = field(default=0.5, metadata=_help("noise perturbation scale"))
    batch_tokens: int = field(default=4096, metadata=_help("padded tokens per profiling batch"))
    plan: PlanConfig = field(default_factory=lambda: PlanConfig(keep_layers=20))
    device: str | None = field(default=None, metadata=_help("cpu, cuda, ..."))

    def __post_init__(self) -> None:
        if self.num_probes < 1:
            raise ValueError("num_probes must be at least 1")


@dataclass
class VisionTrainConfig(TrainSettings, VisionDataSettings):
    """Phases 2 (distill) and 3 (train) of a vision-language student on the Nexus trainer."""

    teacher: str = field(default="default", metadata=_help("the vision-language teacher"))
    student: str | None = field(
        default=None,
        metadata=_help("start from this VLM (phase 3: phase 2's model) instead of pruning the teacher"),
    )
    plan: str | None = field(default=None, metadata=_help("student_plan.json of phase 1"))
    student_layers: int = field(
        default=20, metadata=_help("without a plan: language layers kept, evenly spread")
    )
    train_rows: int = field(
        default=2000, metadata=_help("training rows (synthetic: rendered; a file: at most)")
    )
    heldout_rows: int = field(default=32, metadata=_help("rows of held-out KD / agreement during training"))
    anchor_weight: float = field(default=0.0, metadata=_help("ActivationAnchoringLoss weight (0 = off)"))
    anchor_metric: Literal["cosine", "mse"] = field(default="cosine", metadata=_help("anchoring distance"))
    anchor_pairs: list[list[int]] | None = field(
        default=None, metadata=_help("[[student_layer, teacher_layer], ...]; default: the plan's")
    )
    train_vision: bool = field(
        default=False, metadata=_help("train the copied vision tower (default: frozen)")
    )
    train_projector: bool = field(
        default=False, metadata=_help("train the copied projector (default: frozen)")
    )
    out: str | None = field(default=None, metadata=_help("output directory (default: <results>/<phase>)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anchor_weight < 0:
            raise ValueError("anchor_weight must be non-negative")
        if self.student and self.plan:
            raise ValueError("give student or plan, not both")
        for name in ("train_rows", "heldout_rows", "eval_rows", "student_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class VisionDistillConfig(VisionTrainConfig):
    max_steps: int = phase_default("max_steps", 200)
    lr: float = phase_default("lr", 2e-4)
    warmup_steps: int = phase_default("warmup_steps", 20)
    anchor_weight: float = field(default=0.1, metadata=_help("ActivationAnchoringLoss weight (0 = off)"))


@dataclass
class VisionRecoveryConfig(VisionTrainConfig):
    max_steps: int = phase_default("max_steps", 100)
    kd_weight: float = phase_default("kd_weight", 0.5)
    ce_weight: float = phase_default("ce_weight", 0.5)


@dataclass
class VisionRouterConfig(VisionTrainConfig, RouterSettings):
    """Phase 4: the language tower of phase 3's student turned into experts (copy upcycling by
    default: exactly the dense student at step 0) with routers, trained with KD from the teacher
    on the image rows plus the router losses (the text router's: load balancing, z-loss,
    ``beta_entropy``). The router domains are the rows' capabilities."""

    num_experts: int = field(
        default=5,
        metadata={
            "help": "experts per MoE layer (5: one per synthetic capability, routers start as a "
            "capability classifier)",
            "flag": "--experts",
        },
    )
    max_steps: int = phase_default("max_steps", 100)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_router_settings()


@dataclass
class VisionReleaseConfig(VisionDataSettings):
    """Phase 5: the release directory, the teacher-vs-student accuracy table, the model card."""

    teacher: str = field(default="default", metadata=_help("the vision-language teacher"))
    student: str | None = field(
        default=None, metadata=_help("the dense student (default: the last dense phase's)")
    )
    routed: str | None = field(
        default=None,
        metadata=_help(
            "the routed student (default: the router phase's); released instead of the dense one "
            "only when its held-out accuracy is at least as good"
        ),
    )
    release_dir: str = field(default="nexus-vlm-release-v1", metadata=_help("the release directory"))
    seed: int = field(default=0, metadata=_help("unused by the release; kept for the shared keys"))
    device: str | None = field(default=None, metadata=_help("cpu, cuda, ..."))
