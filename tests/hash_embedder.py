"""A deterministic stand-in for the sentence-transformers embedder (no model to load): each text
becomes a unit vector seeded by its SHA-256, and a token is a whitespace-separated word."""

from __future__ import annotations

import hashlib

import numpy as np

from nexus.knowledge.embedder import EmbedderIdentity


class HashEmbedder:
    max_seq_length = 256
    batch_size = 64

    def __init__(self, dimension: int = 16):
        self.identity = EmbedderIdentity("hash-embedder", "hash-embedder-v1", dimension)

    def count_tokens(self, texts) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts, *, show_progress: bool = False) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.identity.dimension))
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.identity.dimension)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
