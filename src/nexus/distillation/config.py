"""``DistillConfig``: the phase-2 section of the YAML config (``distill:``), overridden by CLI flags.

The optimiser, schedule, loss, precision, parallelism and bookkeeping fields are those of
:class:`nexus.trainer.settings.TrainSettings` (phase-2 defaults: 200 steps, lr 2e-4, 20 warm-up
steps); this class adds the models, the data, anchoring, the teacher cache and on-policy batches
(``lmbda``, :mod:`nexus.trainer.onpolicy`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from nexus.config import config_hash, to_dict
from nexus.models.depth import DEFAULT_SHARE, depth_in_layers, depth_problem
from nexus.trainer.settings import TrainSettings, phase_default

ONPOLICY_FIELDS = ("lmbda", "onpolicy_max_new_tokens", "onpolicy_temperature", "onpolicy_prompt_tokens")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class DistillConfig(TrainSettings):
    # phase-2 defaults of shared settings
    max_steps: int = phase_default("max_steps", 200)
    lr: float = phase_default("lr", 2e-4)
    warmup_steps: int = phase_default("warmup_steps", 20)
    # models
    teacher: str = field(
        default="default", metadata=_help("teacher model spec (default, HF dir, GGUF, hub name)")
    )
    student: str | None = field(
        default=None,
        metadata=_help("student model spec (the teacher's vocabulary, or any with --cross-tokenizer)"),
    )
    cross_tokenizer: Literal["none", "uld", "align"] = field(
        default="none",
        metadata=_help(
            "teacher and student tokenizers differ: 'uld' (sorted-probability L1, ULD) or 'align' "
            "(KL on character-aligned positions over the shared vocabulary)"
        ),
    )
    plan: str | None = field(
        default=None, metadata=_help("student_plan.json from `nexus profile` (keep_layers, anchor_pairs)")
    )
    student_layers: int | float = field(
        default=DEFAULT_SHARE,
        metadata=_help(
            "without --student/--plan: keep this many evenly spread teacher layers (an integer), or this "
            "share of them (a number in (0, 1]; default 2/3: 20 of SmolLM2's 30, 12 of Gemma 3's 18)"
        ),
    )
    seq_kd: bool = field(
        default=False,
        metadata=_help(
            "sequence-level KD data: prompt -> response rows get the teacher's greedy answers, other "
            "rows are dropped (with --kd-weight 0 --ce-weight 1: the baseline for --cross-tokenizer)"
        ),
    )
    # data
    data: list[str] = field(
        default_factory=lambda: ["builtin"],
        metadata=_help("data sources: JSONL/JSON/text files, directories, hf:NAME, builtin"),
    )
    seq_len: int = field(default=256, metadata=_help("packed sequence length"))
    loss_on: Literal["all", "response"] = field(
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
    # activation anchoring
    anchor_weight: float = field(default=0.0, metadata=_help("weight of ActivationAnchoringLoss (0 = off)"))
    anchor_metric: Literal["cosine", "mse"] = field(default="cosine", metadata=_help("anchoring distance"))
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
        default=None,
        metadata={
            "help": "teacher cache root, or a built cache to reuse (default: <out>/../teacher_cache)",
            "flag": "--teacher-cache",
        },
    )
    # on-policy distillation (GKD): a share of the steps trains on the student's own completions
    lmbda: float = field(
        default=0.0,
        metadata=_help(
            "share of steps trained on the student's own sampled completions, scored by the live teacher "
            "(on-policy KD, GKD's lambda; 0 = off, 1 = every step)"
        ),
    )
    onpolicy_max_new_tokens: int = field(
        default=128, metadata=_help("on-policy: tokens the student generates per prompt (at most)")
    )
    onpolicy_temperature: float = field(
        default=1.0, metadata=_help("on-policy: the student's sampling temperature (0 = greedy)")
    )
    onpolicy_prompt_tokens: int = field(
        default=32,
        metadata=_help("on-policy: plain-text rows are prompted with their first N tokens (at most half)"),
    )
    out: str | None = field(default=None, metadata=_help("output directory (default: <results>/distill)"))

    non_result_fields: ClassVar[frozenset[str]] = TrainSettings.non_result_fields | {
        "data_cache_dir",
        "teacher_cache_dir",
    }
    _at_least_one: ClassVar[tuple[str, ...]] = (
        *TrainSettings._at_least_one,
        "seq_len",
        "topk",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = depth_problem(self.student_layers, "student_layers")
        if problem:
            raise ValueError(problem)
        if self.anchor_weight < 0:
            raise ValueError("loss weights must be non-negative")
        if self.kd_weight == 0 and self.ce_weight == 0 and self.anchor_weight == 0:
            raise ValueError("all loss weights are 0: nothing to train on")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.anchor_pairs is not None and any(len(p) != 2 for p in self.anchor_pairs):
            raise ValueError("anchor_pairs entries must be [student_layer, teacher_layer]")
        if self.student and self.plan:
            raise ValueError("give --student or --plan, not both")
        if self.cross_tokenizer != "none" and not self.student:
            raise ValueError("--cross-tokenizer needs --student (a model with its own tokenizer)")
        if self.cross_tokenizer != "none" and self.cache_teacher:
            raise ValueError("--cross-tokenizer runs the live teacher: drop --cache-teacher")
        if self.cross_tokenizer != "none" and self.anchor_weight > 0:
            raise ValueError("--cross-tokenizer does not support activation anchoring (--anchor-weight 0)")
        self._check_onpolicy()

    def _check_onpolicy(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")
        if self.onpolicy_max_new_tokens < 1:
            raise ValueError(
                f"onpolicy_max_new_tokens must be at least 1, got {self.onpolicy_max_new_tokens}"
            )
        if self.onpolicy_temperature < 0:
            raise ValueError(f"onpolicy_temperature must be >= 0, got {self.onpolicy_temperature}")
        if self.onpolicy_prompt_tokens < 1:
            raise ValueError(f"onpolicy_prompt_tokens must be at least 1, got {self.onpolicy_prompt_tokens}")
        if self.lmbda > 0:
            if self.onpolicy_max_new_tokens >= self.seq_len:
                raise ValueError(
                    f"onpolicy_max_new_tokens ({self.onpolicy_max_new_tokens}) must be below seq_len ({self.seq_len})"
                )
            if self.cache_teacher:
                raise ValueError("--lmbda > 0 scores new text with the live teacher: drop --cache-teacher")
            if self.cross_tokenizer != "none":
                raise ValueError("--lmbda > 0 does not support --cross-tokenizer")
            if self.kd_weight <= 0:
                raise ValueError("--lmbda > 0 is KD on the student's samples: --kd-weight must be > 0")

    def resolved(self, teacher_layers: int) -> DistillConfig:
        """This config with a share ``student_layers`` turned into the layer count it gives for a
        teacher of ``teacher_layers`` layers: what the result hash is taken of, so the 2/3 default
        on SmolLM2's 30 layers hashes as the ``20`` it replaced (resumes keep working)."""
        if not isinstance(self.student_layers, float):
            return self
        return dataclasses.replace(self, student_layers=depth_in_layers(self.student_layers, teacher_layers))

    def result_hash(self) -> str:
        # their defaults leave the hash of configs written before these fields existed unchanged
        items = {k: v for k, v in to_dict(self).items() if k not in self.non_result_fields}
        for name, default in (("cross_tokenizer", "none"), ("seq_kd", False), ("gold_weight", None)):
            if items[name] == default:
                del items[name]
        if items["lmbda"] == 0:  # off-policy: the on-policy knobs change nothing
            for name in ONPOLICY_FIELDS:
                del items[name]
        return config_hash(items)
