"""``RetentionConfig``: the settings of ``nexus retention`` and of the release's retention section
(YAML ``release.retention``), one row limit per measure.

The defaults are the release's: sized so the default pipeline (five models: teacher, untrained
plan student, phases 2-4) spends about 8 minutes on the report on 2 CPU cores (the timings they
come from are in docs/quality.md). ``nexus retention`` starts from :meth:`RetentionConfig.full`
instead: every row of every set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Measure name -> the limit field that sizes it. The PIQA measure scores its rows once and
# reports them three ways (all, the tune part, the untuned part: nexus.data.splits).
MEASURES = {
    "piqa": "piqa_limit",
    "gsm8k": "gsm8k_limit",
    "humaneval": "humaneval_limit",
    "builtin-code": "builtin_limit",
    "builtin-math": "builtin_limit",
    "builtin-chat": "builtin_limit",
    "heldout": "heldout_limit",  # held-out KL, top-1 agreement and bits per byte, one pass
    "grounding": "grounding_limit",
}


@dataclass
class RetentionConfig:
    """Configuration of the retention report (``release.retention``; ``nexus retention`` flags)."""

    measures: list[str] = field(
        default_factory=lambda: list(MEASURES),
        metadata={"help": f"measures to run: {', '.join(MEASURES)}"},
    )
    piqa_limit: int | None = field(
        default=200, metadata={"help": "PIQA rows (of the 1338 shared; None: all), drawn with `seed`"}
    )
    gsm8k_limit: int | None = field(
        default=6, metadata={"help": "GSM8K evaluation-split rows (None: all 692)"}
    )
    humaneval_limit: int | None = field(default=6, metadata={"help": "HumanEval problems (None: all 164)"})
    builtin_limit: int | None = field(
        default=8, metadata={"help": "items of each built-in code/math/chat task (None: all)"}
    )
    heldout_limit: int | None = field(
        default=32,
        metadata={"help": "held-out texts for KL, top-1 agreement and bits per byte (None: all ~2.3k)"},
    )
    grounding_limit: int | None = field(
        default=6, metadata={"help": "grounding questions of the held-out set (None: all 48)"}
    )
    seed: int = field(default=1234, metadata={"help": "seed of every limit's draw"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where fast) | bf16 | fp32"})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 (default: cuda if present)"}
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch"})
    batch_size: int = field(default=8, metadata={"help": "items per generation / held-out batch"})
    heldout_max_length: int = field(default=256, metadata={"help": "tokens per held-out text"})
    grounding_max_new_tokens: int = field(default=48, metadata={"help": "answer length cap, grounding"})
    allow_unsandboxed_code: bool = field(
        default=False,
        metadata={"help": "run code checks where the kernel gives no namespaces (limits + guard only)"},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "folder of the public sets (../shared/data)"}
    )
    teacher: str | None = field(
        default=None, metadata={"help": "teacher spec (default: the one the results dir was made with)"}
    )
    plot: bool = field(default=True, metadata={"help": "draw retention.png (needs matplotlib)"})

    def __post_init__(self) -> None:
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"unknown measure(s) {', '.join(unknown)} (known: {', '.join(MEASURES)})")
        for name in set(MEASURES.values()):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or null for every row)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        for name in ("batch_size", "heldout_max_length", "grounding_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def limit(self, measure: str) -> int | None:
        return getattr(self, MEASURES[measure])

    def full(self) -> RetentionConfig:
        """This config with every limit lifted: every row of every set."""
        return dataclasses.replace(self, **{name: None for name in set(MEASURES.values())})
