"""What the fine-tuning recipes of phases 3 (train) and 4 (router) share: the config of a
teacher/student pair on domain-mixed instruction data, and the setup steps that load them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from nexus.data.formats import DOMAINS
from nexus.errors import NexusError
from nexus.trainer.settings import TrainSettings

log = logging.getLogger(__name__)


def _help(text: str) -> dict:
    return {"help": text}


def _default_weights() -> dict[str, float]:
    return {d: 1.0 for d in DOMAINS}


@dataclass
class FineTuneConfig(TrainSettings):
    """A teacher/student pair on domain-tagged data (the base of ``TrainConfig`` and ``RouterConfig``)."""

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
    default_domain: Literal["code", "math", "chat"] = field(
        default="chat", metadata=_help("domain of rows that carry no domain tag")
    )
    seq_len: int = field(default=256, metadata=_help("packed sequence length"))
    loss_on: Literal["all", "response"] = field(
        default="response", metadata=_help("train on 'response' tokens only, or 'all'")
    )
    heldout_fraction: float = field(default=0.05, metadata=_help("fraction of documents held out per domain"))
    max_examples: int | None = field(
        default=None, metadata=_help("use at most this many examples (even per domain)")
    )

    non_result_fields: ClassVar[frozenset[str]] = TrainSettings.non_result_fields | {"collapse_threshold"}
    _at_least_one: ClassVar[tuple[str, ...]] = (*TrainSettings._at_least_one, "seq_len")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [d for d in self.domain_weights if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown domain '{unknown[0]}' in domain_weights (known: {', '.join(DOMAINS)})")
        if any(w < 0 for w in self.domain_weights.values()):
            raise ValueError("domain weights must be non-negative")
        if not any(w > 0 for w in self.domain_weights.values()):
            raise ValueError("domain weights are all zero: at least one domain must have a positive weight")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("kd_weight and ce_weight are both 0: nothing to train on")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


def default_student(student: str | None, results_dir: Path) -> str:
    """The configured student, else phase 2's output ``<results>/distill/model``."""
    if student:
        return student
    distilled = Path(results_dir) / "distill" / "model"
    if (distilled / "config.json").is_file():
        return str(distilled)
    raise NexusError(f"no student given and no distilled student at {distilled}: pass --student SPEC")


def load_pair(cfg: FineTuneConfig, results_dir: Path):
    """Teacher, student (fp32, trainable) and the tokenizer; refuses a vocabulary mismatch."""
    from nexus.models import load_model, load_tokenizer

    teacher, _ = load_model(cfg.teacher)
    student, resolved = load_model(default_student(cfg.student, results_dir))
    tokenizer = load_tokenizer(resolved)
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab:
        raise NexusError(
            f"student vocabulary ({s_vocab}) differs from the teacher's ({t_vocab}): KD needs the same vocabulary"
        )
    return teacher, student, tokenizer


def build_data(cfg: FineTuneConfig, tokenizer, teacher):
    """Domain-mixed packed rows (see :mod:`nexus.data.domains`)."""
    from nexus.data.domains import build_domain_data, load_domain_examples

    grouped = load_domain_examples(
        cfg.data,
        teacher=teacher,
        tokenizer=tokenizer,
        seed=cfg.seed,
        default_domain=cfg.default_domain,
        max_examples=cfg.max_examples,
    )
    data = build_domain_data(
        grouped,
        tokenizer,
        seq_len=cfg.seq_len,
        weights=cfg.domain_weights,
        loss_on=cfg.loss_on,
        heldout_fraction=cfg.heldout_fraction,
        seed=cfg.seed,
    )
    log.info(
        "data: %s examples per domain, mixed as %s, %d train rows x %d tokens",
        data.examples_per_domain,
        {k: round(v, 3) for k, v in data.weights.items()},
        len(data.train),
        data.train.seq_len,
    )
    return data
