"""Hugging Face datasets as data sources, through the ``datasets`` library when it is installed.

A training source spells one ``hf:NAME[:SPLIT]`` (NAME a hub name or a local path, SPLIT
``train`` by default); the text corpus (:mod:`nexus.data.corpus`), the image-text rows
(:mod:`nexus.multimodal.data`) and the benchmark's hub tasks (:mod:`nexus.benchmark.tasks`) all
load through :func:`load_hf_dataset`, so a missing library or an unloadable dataset is the same
one-line :class:`~nexus.errors.NexusError` everywhere.
"""

from __future__ import annotations

from typing import Any

from nexus.errors import NexusError

HF_PREFIX = "hf:"


def is_hf_source(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def parse_hf_source(source: str) -> tuple[str, str]:
    """``hf:NAME[:SPLIT]`` -> (NAME, SPLIT), the split ``train`` when not given."""
    name, _, split = source.removeprefix(HF_PREFIX).partition(":")
    return name, split or "train"


def load_hf_dataset(
    name: str,
    *,
    split: str,
    subject: str,
    config: str | None = None,
    data_files: str | None = None,
) -> Any:
    """``datasets.load_dataset(name, config, split=split[, data_files=...])``; ``subject`` (what
    reads it: a source, a task) starts the error messages."""
    try:
        import datasets
    except ImportError:
        raise NexusError(
            f"{subject}: reading Hugging Face datasets needs the 'datasets' package (pip install datasets)"
        ) from None
    kwargs: dict[str, Any] = {"split": split}
    if data_files:
        kwargs["data_files"] = data_files
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as exc:  # network, unknown name, bad split: the library raises many types
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise NexusError(f"{subject}: cannot load dataset {name!r} (split {split!r}): {reason}") from None
