"""Typed configs of phase 1: the profile (``profile`` section) and the student plan (``plan``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nexus.models.depth import depth_problem
from nexus.profiling.engine import PERTURBATIONS


@dataclass
class PlanConfig:
    """Which teacher layers a depth-pruned student keeps (give ``keep_layers`` or ``param_budget``)."""

    keep_layers: int | float | None = field(
        default=None,
        metadata={
            "help": "teacher layers the student keeps: a count (20), or a share of the teacher's layers "
            "(0.6667: 20 of 30, 12 of 18)"
        },
    )
    param_budget: int | None = field(
        default=None, metadata={"help": "most parameters the student may have (keeps as many layers as fit)"}
    )
    rescore_every: int = field(
        default=0,
        metadata={"help": "re-profile the partly pruned teacher after every k removals (0: score once)"},
    )
    protect_first: bool = field(default=True, metadata={"help": "never remove the first layer"})
    protect_last: bool = field(default=True, metadata={"help": "never remove the last layer"})
    protect_above: float | None = field(
        default=None,
        metadata={
            "help": "also never remove a layer whose removal alone raises some capability's probe loss "
            "by more than this share (0.5: +50%); the criterion ranks the rest"
        },
    )
    critical_per_capability: int = field(
        default=3, metadata={"help": "critical (anchor) layers per capability: the most sensitive ones"}
    )
    criterion: Literal["sensitivity", "block_influence"] = field(
        default="sensitivity",
        metadata={
            "help": "what ranks layers for removal: sensitivity (NIWT: probe NLL increase when the layer "
            "is removed) or block_influence (ShortGPT: mean 1 - cos(layer input, output) on the probes)"
        },
    )
    aggregate: Literal["mean", "max"] = field(
        default="mean",
        metadata={"help": "how per-capability sensitivities combine into one layer importance"},
    )

    def __post_init__(self) -> None:
        problem = None if self.keep_layers is None else depth_problem(self.keep_layers, "plan.keep_layers")
        if problem:
            raise ValueError(problem)
        if self.param_budget is not None and self.param_budget < 1:
            raise ValueError("plan.param_budget must be >= 1")
        if self.keep_layers is not None and self.param_budget is not None:
            raise ValueError("give plan.keep_layers or plan.param_budget, not both")
        if self.rescore_every < 0:
            raise ValueError("plan.rescore_every must be >= 0")
        if self.protect_above is not None and self.protect_above < 0:
            raise ValueError("plan.protect_above must be >= 0 (a relative loss increase, 0.5 = +50%)")
        if self.critical_per_capability < 0:
            raise ValueError("plan.critical_per_capability must be >= 0")
        if self.criterion not in ("sensitivity", "block_influence"):
            raise ValueError(f"plan.criterion must be sensitivity or block_influence, not {self.criterion!r}")

    @property
    def has_target(self) -> bool:
        return self.keep_layers is not None or self.param_budget is not None


@dataclass
class ProfileConfig:
    """NIWT sensitivity profile of one model: perturb each layer, measure each capability's probe NLL."""

    model: str = field(
        default="default", metadata={"help": "model spec: default, GGUF file, HF dir, checkpoint"}
    )
    name: str | None = field(
        default=None, metadata={"help": "output name: results/profile/<name>.json (default: from the model)"}
    )
    capabilities: list[str] = field(
        default_factory=lambda: ["code", "math", "chat"], metadata={"help": "capabilities to profile"}
    )
    probes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "probe files: CAPABILITY=PATH, or PATH (rows go to their domain); "
            "capabilities without a file use the built-in offline probes"
        },
    )
    num_probes: int = field(default=32, metadata={"help": "probe examples per capability"})
    probe_offset: int = field(
        default=0,
        metadata={"help": "skip this many of the seeded shuffle (disjoint samples for stability checks)"},
    )
    max_tokens: int = field(
        default=384, metadata={"help": "longest probe sequence in tokens (longer: truncated)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the probe choice and of the noise"})
    perturbation: Literal["removal", "noise", "attention", "mlp"] = field(
        default="removal", metadata={"help": "per-layer perturbation: " + ", ".join(PERTURBATIONS)}
    )
    noise_scale: float = field(
        default=0.5, metadata={"help": "noise std relative to each token's output RMS"}
    )
    layers: list[int] | None = field(
        default=None, metadata={"help": "profile only these layers (default: all)"}
    )
    batch_tokens: int = field(default=4096, metadata={"help": "padded tokens per forward batch"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where supported), bf16, fp32"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if present)"})
    compare: str | None = field(
        default=None, metadata={"help": "another profile JSON: report structural alignment and plot both"}
    )
    chat_answer_model: str | None = field(
        default=None,
        metadata={
            "help": "model whose greedy answers fill the built-in chat probes (default: the profiled one)"
        },
    )
    chat_max_new_tokens: int = field(default=96, metadata={"help": "length of built-in chat answers"})
    alignment_threshold: float = field(
        default=0.1, metadata={"help": "a layer 'costs' a capability when its sensitivity exceeds this"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the checkpoint"})
    plan: PlanConfig = field(
        default_factory=PlanConfig, metadata={"help": "student plan written after the profile"}
    )

    def __post_init__(self) -> None:
        if not self.capabilities and not self.probes and not self.compare:
            raise ValueError("no capabilities to profile")
        if self.num_probes < 1:
            raise ValueError("num_probes must be >= 1")
        if self.probe_offset < 0:
            raise ValueError("probe_offset must be >= 0")
        if self.max_tokens < 8:
            raise ValueError("max_tokens must be >= 8")
        if self.batch_tokens < 1:
            raise ValueError("batch_tokens must be >= 1")
        if self.noise_scale < 0:
            raise ValueError("noise_scale must be >= 0")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}")
        if self.precision not in ("auto", "bf16", "fp32", "fp16"):
            raise ValueError("precision must be auto, bf16, fp16 or fp32")
        if self.layers is not None and (not self.layers or any(i < 0 for i in self.layers)):
            raise ValueError("layers must be a non-empty list of layer indices >= 0")
