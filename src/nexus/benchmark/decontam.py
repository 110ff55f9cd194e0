"""Overlap of the scored items with the student's training data (decontamination).

As GPT-3 (Brown et al. 2020, appendix C) and lm-evaluation-harness's decontamination do: texts
are lower-cased, punctuation becomes spaces, words are split on whitespace, and an item is
*dirty* when any 13-gram of its words (its question and reference answer) occurs in any
training example. An item shorter than 13 words is dirty when its whole word sequence occurs.
The scan runs the lm-eval way round: the items' n-grams are collected (small), then every
training example is streamed past them.

The training data is what the student records: the release's ``nexus_manifest.json``
(``configs.pipeline`` sections ``distill`` / ``train`` / ``router``), else the ``config.yaml``
that phases 2-4 save beside their ``model/`` directory, followed up the chain of students
(a phase's ``student``, by default ``<results>/distill/model``). ``BenchmarkConfig.training_data``
overrides both. Sources are read by the training readers themselves
(:func:`nexus.data.corpus.load_source`), so evaluation-split rows are left out exactly as training
left them out; the built-in chat prompts are checked without the teacher's answers, and
``hf:`` sources are not fetched (they are listed as unchecked).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus.errors import NexusError

log = logging.getLogger(__name__)

NGRAM = 13
PHASE_KEYS = ("distill", "train", "router")
_PUNCT = re.compile(r"[^\w\s]|_")


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation removed (lm-eval's ``Janitor.normalize_string``)."""
    return _PUNCT.sub(" ", text.lower()).split()


def item_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """The n-grams of ``text`` (the whole word sequence when it is shorter than ``n``)."""
    w = words(text)
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def dirty_items(items: list[str], training_texts: Iterable[str], n: int = NGRAM) -> list[bool]:
    """For each item text: does any of its n-grams occur in a training text?"""
    owners: dict[tuple[str, ...], list[int]] = {}
    for k, text in enumerate(items):
        for gram in item_ngrams(text, n):
            owners.setdefault(gram, []).append(k)
    lengths = sorted({len(g) for g in owners})
    dirty = [False] * len(items)
    for text in training_texts:
        w = words(text)
        for length in lengths:
            for i in range(len(w) - length + 1):
                hit = owners.get(tuple(w[i : i + length]))
                if hit:
                    for k in hit:
                        dirty[k] = True
    return dirty


@dataclass
class TrainingRecord:
    """The training sources a student records, and where that record was found."""

    sources: list[tuple[str, int]] = field(default_factory=list)  # (source, seed)
    found_in: str | None = None
    missing: str | None = None  # why there is no record


def _from_sections(sections: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for key in PHASE_KEYS:
        section = sections.get(key)
        if section is None:
            continue
        seed = int(section.get("seed") or 0)
        for source in section.get("data") or ["builtin"]:
            out.append((str(source), seed))
    return out


def _phase_chain(model_dir: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """Sources from ``<phase>/config.yaml`` beside ``model_dir``, following the chain of students."""
    sources, seen, configs = [], set(), []
    current: Path | None = model_dir
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        config = current.parent / "config.yaml"
        if not config.is_file():
            break
        try:
            cfg = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            break
        if not isinstance(cfg, dict) or "data" not in cfg:
            break
        configs.append(str(config))
        seed = int(cfg.get("seed") or 0)
        sources += [(str(s), seed) for s in cfg.get("data") or []]
        upstream = cfg.get("student")
        if upstream:
            current = Path(upstream)
        elif current.parent.name in ("train", "router"):
            current = current.parent.parent / "distill" / "model"
        else:
            current = None
    return sources, configs


def training_record(student: str, explicit: list[str] | None = None, seed: int = 0) -> TrainingRecord:
    """What the student was trained on (see the module docstring); ``explicit`` sources (with the
    seed of their built-in parts) take precedence."""
    if explicit is not None:
        return TrainingRecord([(s, seed) for s in explicit], found_in="benchmark config (training_data)")
    path = Path(student)
    if not path.is_dir():
        return TrainingRecord(missing=f"{student} is not a Nexus model directory: no training record")
    manifest = path / "nexus_manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            return TrainingRecord(missing=f"{manifest} is unreadable: {exc}")
        sections = (data.get("configs") or {}).get("pipeline") or {}
        sources = _from_sections(sections) or [(s, 0) for s in data.get("data") or {}]
        return TrainingRecord(sorted(set(sources)), found_in=str(manifest))
    sources, configs = _phase_chain(path)
    if not configs:
        return TrainingRecord(
            missing=f"no nexus_manifest.json in {path} and no phase config.yaml beside it: training data not recorded"
        )
    return TrainingRecord(sorted(set(sources)), found_in=", ".join(configs))


def _example_text(ex) -> str:
    parts = [ex.text, ex.prompt, ex.response]
    parts += [m.get("content", "") for m in ex.messages or []]
    return "\n".join(p for p in parts if p)


def training_texts(record: TrainingRecord) -> tuple[list[str], list[str], list[str]]:
    """``(texts, checked sources, unchecked sources with the reason)``."""
    from nexus.data.corpus import load_source

    texts, checked, unchecked = [], [], []
    for source, seed in record.sources:
        if source.startswith("hf:"):
            unchecked.append(f"{source} (hub data is not fetched for the overlap check)")
            continue
        try:
            examples = load_source(source, seed=seed, chat_answers=False)
        except NexusError as exc:
            unchecked.append(f"{source} ({exc})")
            continue
        texts += [_example_text(ex) for ex in examples]
        checked.append(source if not source.startswith("builtin") else f"{source} (seed {seed})")
    return texts, checked, unchecked


def overlap_report(task_items: dict[str, list[str]], record: TrainingRecord) -> dict[str, Any]:
    """Per task, which items are dirty; plus what was checked. ``task_items``: task name -> item texts."""
    base: dict[str, Any] = {"ngram": NGRAM, "record": record.found_in}
    if record.missing:
        return {**base, "checked": False, "reason": record.missing}
    texts, checked, unchecked = training_texts(record)
    base.update(checked=bool(checked), sources=checked, unchecked=unchecked, training_texts=len(texts))
    base["dirty"] = {name: dirty_items(items, texts) for name, items in task_items.items()}
    if not checked:
        base["reason"] = "no recorded training source could be read"
    return base
