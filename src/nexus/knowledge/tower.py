"""The Knowledge Tower: retrieval over an index directory, and the context a chat prepends.

``retrieve(query, k)`` ranks chunks by cosine similarity. ``retrieve_text_context(prompt)``
keeps the ranked chunks that clear a similarity threshold (so an unrelated question gets no
context at all) and fit a token budget, and formats them as the block prepended to the user's
message (:func:`augment_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import NexusError
from nexus.knowledge.index import embedder_mismatch_message, read_index_dir

# Cosine similarities of all-MiniLM-L6-v2: a question and the chunk that answers it score
# about 0.4-0.8 on tests/assets/rag; unrelated chunks stay below about 0.2.
DEFAULT_THRESHOLD = 0.3
DEFAULT_K = 4
DEFAULT_CONTEXT_TOKENS = 512
# The retrieved chunks come first (numbered, with their sources), then the question. Of the
# layouts tried with the 135M default teacher, this one answered from the documents; a
# "Use the following context..." header followed by "Question: ..." made it loop.
CONTEXT_HEADER = ""
QUESTION_PREFIX = "Using the documentation above, answer: "


@dataclass(frozen=True)
class Retrieved:
    rank: int  # 1-based
    score: float  # cosine similarity in [-1, 1]
    text: str
    source: str
    position: int  # chunk number within its source document
    row: int  # row in the index


def format_context(chunks: Sequence[Retrieved]) -> str:
    """The context block for ``chunks`` (empty string for none)."""
    if not chunks:
        return ""
    body = "\n\n".join(f"[{i}] (source: {Path(c.source).name})\n{c.text}" for i, c in enumerate(chunks, 1))
    return f"{CONTEXT_HEADER}{body}\n\n"


def augment_prompt(context: str, prompt: str) -> str:
    """The user message with the retrieved context prepended (unchanged without context)."""
    return f"{context}{QUESTION_PREFIX}{prompt}" if context else prompt


class KnowledgeTower:
    """A loaded index plus the embedder it was built with (``KnowledgeTower.load(dir)``)."""

    def __init__(self, directory: Path, index, docs: list[dict], meta: dict, embedder):
        self.directory = directory
        self.index = index
        self.docs = docs
        self.meta = meta
        self.embedder = embedder
        self.threshold = DEFAULT_THRESHOLD
        self.k = DEFAULT_K
        self.max_context_tokens = DEFAULT_CONTEXT_TOKENS
        self.count_tokens: Callable[[Sequence[str]], list[int]] = embedder.count_tokens
        self.last_retrieved: list[Retrieved] = []

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder=None,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_K,
        max_context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    ) -> KnowledgeTower:
        """Open an index directory. ``embedder`` (a spec string or a loaded
        :class:`~nexus.knowledge.embedder.Embedder`) defaults to the one recorded in the index;
        an embedder other than the recorded one is refused."""
        from nexus.knowledge.embedder import Embedder

        directory = Path(directory)
        index, docs, meta = read_index_dir(directory)
        recorded = meta.get("embedder") or {}
        if embedder is None:
            embedder = Embedder(recorded.get("spec", "default"))
        elif isinstance(embedder, str):
            embedder = Embedder(embedder)
        if not embedder.identity.same_as(recorded):
            raise NexusError(embedder_mismatch_message(directory, recorded, embedder.identity.to_dict()))
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(meta.get("config", {}).get("hnsw_ef_search", 128))
        tower = cls(directory, index, docs, meta, embedder)
        tower.threshold, tower.k, tower.max_context_tokens = threshold, k, max_context_tokens
        return tower

    def __len__(self) -> int:
        return self.index.ntotal

    def retrieve(self, query: str, k: int | None = None) -> list[Retrieved]:
        """The ``k`` most similar chunks to ``query``, best first."""
        k = self.k if k is None else k
        if k < 1:
            raise NexusError(f"k must be >= 1, got {k}")
        if not query.strip() or self.index.ntotal == 0:
            return []
        vector = self.embedder.embed([query])  # (1, d)
        scores, rows = self.index.search(vector, min(k, self.index.ntotal))
        results = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist(), strict=True):
            if row < 0:  # HNSW may return fewer than k
                continue
            entry = self.docs[row]
            results.append(
                Retrieved(
                    len(results) + 1,
                    float(score),
                    entry["text"],
                    entry["source"],
                    entry.get("position", 0),
                    row,
                )
            )
        return results

    def select_context(
        self,
        prompt: str,
        *,
        k: int | None = None,
        max_tokens: int | None = None,
        threshold: float | None = None,
    ) -> list[Retrieved]:
        """Chunks above ``threshold`` that fit ``max_tokens`` (in rank order; also kept in
        ``last_retrieved`` for ``/sources``)."""
        threshold = self.threshold if threshold is None else threshold
        budget = self.max_context_tokens if max_tokens is None else max_tokens
        relevant = [c for c in self.retrieve(prompt, k) if c.score >= threshold]
        chosen, used = [], 0
        costs = self.count_tokens([format_context([c]) for c in relevant]) if relevant else []
        for chunk, cost in zip(relevant, costs, strict=True):
            if used + cost > budget:
                break
            chosen.append(chunk)
            used += cost
        self.last_retrieved = chosen
        return chosen

    def retrieve_text_context(
        self,
        prompt: str,
        *,
        k: int | None = None,
        max_tokens: int | None = None,
        threshold: float | None = None,
    ) -> str:
        """The context string to prepend to ``prompt`` ('' when nothing relevant is found)."""
        return format_context(self.select_context(prompt, k=k, max_tokens=max_tokens, threshold=threshold))
