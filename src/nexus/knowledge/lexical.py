"""BM25 over an index's chunks, the lexical half of hybrid retrieval.

Dense retrieval (the embedder) finds a chunk that says the same thing in other words; it misses a
chunk that shares the question's rare words -- a flag, a file name, a command -- when the rest of
the chunk is about something else. BM25 (Robertson and Zaragoza, 2009; Lucene's variant of the
idf) ranks exactly by those words. :class:`KnowledgeTower` fuses the two rankings by reciprocal
rank fusion (Cormack et al., 2009), as Elasticsearch, Weaviate and LlamaIndex do for hybrid search.

The BM25 statistics are built from the index's chunk texts when the tower first needs them (a
few milliseconds per thousand chunks), so an index on disk needs nothing new.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
# Reciprocal rank fusion's constant: a document at rank r of a ranking counts 1 / (RRF_K + r).
RRF_K = 60


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits ("--fresh" -> "fresh", "status.json" -> "status", "json")."""
    return _WORD.findall(text.lower())


class BM25:
    """BM25 scores of ``texts`` for a query (``k1``, ``b``: the usual defaults)."""

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.n = len(texts)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths = np.zeros(self.n, dtype=np.float32)
        for doc, text in enumerate(texts):
            counts = Counter(words(text))
            lengths[doc] = sum(counts.values())
            for term, tf in counts.items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(doc)
                tfs.append(tf)
        self.norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if self.n else 0.0, 1.0))
        self.postings = {
            t: (np.array(d, dtype=np.int64), np.array(f, dtype=np.float32)) for t, (d, f) in postings.items()
        }

    def idf(self, term: str) -> float:
        df = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """``(n,)`` BM25 score of every text (a repeated query word counts once)."""
        out = np.zeros(self.n, dtype=np.float32)
        for term in dict.fromkeys(words(query)):
            if term in self.postings:
                docs, tf = self.postings[term]
                out[docs] += self.idf(term) * tf * (self.k1 + 1) / (tf + self.norm[docs])
        return out

    def top(self, query: str, n: int) -> list[int]:
        """Indices of the ``n`` best-scoring texts with a score above 0, best first."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        return hits[np.argsort(-scores[hits], kind="stable")][:n].tolist()


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Items of ``rankings`` (each best first) ordered by the sum of ``1 / (k + rank)`` (rank from 1);
    ties keep the order of first appearance."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda item: -fused[item])
