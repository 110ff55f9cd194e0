"""``BenchmarkConfig``: the settings of ``nexus benchmark`` (YAML section ``benchmark``), one
field per CLI flag, with its help text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchmarkConfig:
    """Configuration of ``nexus benchmark`` (YAML section ``benchmark``; CLI flags override)."""

    student: str | None = field(
        default=None,
        metadata={"help": "student model spec; default: the newest nexus-release-v* directory here"},
    )
    student_name: str | None = field(
        default=None,
        metadata={"help": "name the reports give the student (default: its spec; the release names its own)"},
    )
    teacher: str = field(default="default", metadata={"help": "teacher model spec"})
    tasks: list[str] = field(
        default_factory=lambda: ["builtin"],
        metadata={
            "help": "task names (piqa, gsm8k, humaneval, code_alpaca, self_instruct, builtin-*, hf-*), "
            "'builtin', 'shared', or task YAML files"
        },
    )
    limit: int | None = field(default=50, metadata={"help": "items per task, drawn with `seed` (None: all)"})
    seed: int = field(default=1234, metadata={"help": "seed for the --limit draw and the bootstrap"})
    data_dir: str | None = field(
        default=None, metadata={"help": "folder of the public sets (default ../shared/data)"}
    )
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where fast) | bf16 | fp32"})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 (default: cuda if present)"}
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads for torch (default: torch's choice; 1 on a crowded machine)"},
    )
    batch_size: int = field(default=8, metadata={"help": "items per generation batch"})
    loglik_items: int = field(default=32, metadata={"help": "multiple-choice items per scoring step"})
    max_batch_tokens: int = field(
        default=4096, metadata={"help": "token budget of one log-likelihood forward"}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "override every task's generation cap"}
    )
    code_timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit per code check"})
    code_memory_mb: int = field(default=1024, metadata={"help": "address-space limit per code check"})
    allow_unsandboxed_code: bool = field(
        default=False,
        metadata={"help": "run code checks where the kernel gives no namespaces (limits + guard only)"},
    )
    fidelity: bool = field(
        default=True, metadata={"help": "measure KL(teacher||student) and top-1 agreement"}
    )
    fidelity_items: int = field(default=32, metadata={"help": "held-out texts for the fidelity metrics"})
    fidelity_max_length: int = field(default=256, metadata={"help": "tokens per fidelity text"})
    bootstrap_samples: int = field(default=2000, metadata={"help": "resamples for the gap's 95% CI"})
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks to run on both models (extra lm-eval)"},
    )
    training_data: list[str] | None = field(
        default=None,
        metadata={
            "help": "the student's training sources, for the 13-gram overlap check (default: read "
            "from the student's nexus_manifest.json or its phase config.yaml)"
        },
    )
    training_seed: int = field(
        default=0, metadata={"help": "seed the built-in sources of training_data were generated with"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from checkpoints"})
    phase: int = field(default=5, metadata={"help": "phase number shown in the status line"})
    phase_name: str = field(default="Benchmark", metadata={"help": "phase name shown in the status line"})

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1 (or null for every item)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        for name in (
            "batch_size",
            "loglik_items",
            "max_batch_tokens",
            "fidelity_items",
            "fidelity_max_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.code_timeout_s <= 0:
            raise ValueError("code_timeout_s must be positive")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
