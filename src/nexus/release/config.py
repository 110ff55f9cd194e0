"""``ReleaseConfig`` (the ``release:`` section) and which trained student goes into the release."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus.errors import NexusError

MANIFEST = "nexus_manifest.json"
HEATMAP = "sensitivity_heatmap.png"


@dataclass
class ReleaseConfig:
    """Phase 5 (``release`` section)."""

    teacher: str = field(default="default", metadata={"help": "teacher spec (benchmark and alignment)"})
    student: str = field(
        default="best",
        metadata={
            "help": "the released student: 'best' (the routed student only when its held-out KD is no "
            "worse than the dense student it came from, else the dense one), 'router', 'train', "
            "'distill', or a model spec"
        },
    )
    release_dir: str = field(default="nexus-release-v1", metadata={"help": "where the release goes"})
    seed: int = field(default=0, metadata={"help": "seed for the student profile and the benchmark draw"})
    docs: list[str] = field(
        default_factory=lambda: ["docs", "README.md"],
        metadata={
            "help": "documents for the knowledge index (relative paths: working dir, then the Nexus tree)"
        },
    )
    index: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "knowledge index settings (IndexConfig)"}
    )
    benchmark: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "benchmark settings (BenchmarkConfig)"}
    )
    retention: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "retention report settings (RetentionConfig; 'enabled: false' skips it): the "
            "model card's Retention section and results/retention.md"
        },
    )
    gguf: str = field(
        default="none",
        metadata={
            "help": "also write the student as <release_dir>/<name>-<type>.gguf for llama.cpp / Ollama "
            "(f16, bf16, q8_0 or f32, as `nexus export gguf --type`); 'none' writes no GGUF. A routed "
            "(MoE) student gets none, with one line saying why"
        },
    )
    profile_student: bool = field(
        default=True, metadata={"help": "profile the student for structural alignment"}
    )
    student_profile: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "overrides of the student's profile config (ProfileConfig)"}
    )

    def __post_init__(self) -> None:
        from nexus.models.gguf_export import GGUF_TYPES

        retention_config(self)  # a bad retention section fails before phase 1, not after training
        if self.gguf not in ("none", *GGUF_TYPES):
            raise NexusError(
                f"release.gguf must be none or one of {', '.join(GGUF_TYPES)}, got {self.gguf!r}"
            )

    @property
    def retention_enabled(self) -> bool:
        return self.retention.get("enabled", True) is not False


def retention_config(cfg: ReleaseConfig):
    """The release's :class:`~nexus.retention.config.RetentionConfig` (its row limits are the
    defaults unless the section sets them), or None when the section says ``enabled: false``."""
    if not cfg.retention_enabled:
        return None
    from nexus.config import from_dict
    from nexus.retention.config import RetentionConfig

    settings = {k: v for k, v in cfg.retention.items() if k != "enabled"}
    return from_dict(RetentionConfig, {"teacher": cfg.teacher, **settings}, "release.retention")


PHASE_MODELS = ("router", "train", "distill")  # newest first


def choose_student(choice: str, results_dir: Path) -> tuple[str, str]:
    """The model to release and why (one line for the card and the log)."""
    if choice not in ("best", *PHASE_MODELS):
        return choice, f"given in the release config: {choice}"
    if choice in PHASE_MODELS:
        path = results_dir / choice / "model"
        if not (path / "config.json").is_file():
            raise NexusError(f"release.student is '{choice}' but {path} does not exist: run that phase first")
        return str(path), f"the {choice} phase's output (release.student: {choice})"
    existing = [k for k in PHASE_MODELS if (results_dir / k / "model" / "config.json").is_file()]
    if not existing:
        raise NexusError(
            f"no trained student under {results_dir} (distill, train or router): run those phases first"
        )
    # The router phase evaluates the dense model it started from and the routed one on the same
    # held-out rows: release the routed student only if routing did not cost fidelity there.
    router_file = results_dir / "router" / "summary.json"
    if "router" in existing and router_file.is_file():
        from nexus.trainer.evaluate import heldout_kd  # the key evaluate_fidelity writes

        summary = json.loads(router_file.read_text())
        routed, dense = heldout_kd(summary.get("eval")), heldout_kd(summary.get("dense_eval"))
        dense_key = next((k for k in ("train", "distill") if k in existing), None)
        if routed is not None and dense is not None and dense_key is not None:
            key = "router" if routed <= dense else dense_key
            reason = (
                f"held-out KD on the router phase's rows: routed {routed:.3f} vs dense {dense:.3f} "
                f"nats/token -> {key}"
            )
            return str(results_dir / key / "model"), reason
    if router_file.is_file() and "router" not in existing:
        kept = json.loads(router_file.read_text()).get("kept_dense")
        if kept:  # a family without an MoE counterpart (see nexus.router.experts.dense_only_reason)
            return str(results_dir / existing[0] / "model"), f"{kept} -> {existing[0]}"
    return str(results_dir / existing[0] / "model"), f"the newest phase output ({existing[0]})"
