"""Find and load what the chat talks to: the newest release, any model spec, its knowledge index."""

from __future__ import annotations

import re
from pathlib import Path

from nexus.errors import NexusError
from nexus.knowledge.index import INDEX_FILE

RELEASE_PATTERN = re.compile(r"^nexus-release-v(\d+)$")
NO_RELEASE = "no release found: run ./run_nexus_master.sh first, or pass --model_path"


def find_newest_release(directory: str | Path = ".") -> Path | None:
    """The ``nexus-release-v<N>`` folder with the highest N in ``directory`` (None if none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    releases = []
    for child in directory.iterdir():
        match = RELEASE_PATTERN.match(child.name)
        if match and child.is_dir():
            releases.append((int(match.group(1)), child.stat().st_mtime, child))
    return max(releases)[2] if releases else None


def resolve_chat_model(model_path: str | None, cwd: str | Path = ".") -> str:
    """The model spec to chat with: ``model_path`` as given, else the newest release."""
    if model_path:
        return model_path
    release = find_newest_release(cwd)
    if release is None:
        raise NexusError(NO_RELEASE)
    return str(release)


def knowledge_dir_for(resolved) -> Path | None:
    """The model's own knowledge index folder, if it ships one (a release does)."""
    for candidate in (Path(resolved.source), Path(resolved.path)):
        if candidate.is_dir() and (candidate / INDEX_FILE).is_file():
            return candidate
    return None


def describe_loaded(resolved, model) -> str:
    """One line: what was loaded, and its size."""
    from nexus.models import count_parameters

    layers = getattr(model.config, "num_hidden_layers", "?")
    params = count_parameters(model) / 1e6
    return f"loaded {resolved.describe()} ({type(model).__name__}, {layers} layers, {params:.1f}M parameters)"


def load_chat_model(
    spec: str, *, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False
):
    """``(model, tokenizer, resolved)`` for a spec (default, GGUF, HF dir, release, checkpoint, hub)."""
    from transformers.utils import logging as hf_logging

    from nexus.models import load_model, load_tokenizer

    hf_logging.disable_progress_bar()  # the weight-loading bar would interleave with the chat
    model, resolved = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    return model, tokenizer, resolved
