"""Hybrid retrieval (nexus.knowledge.lexical): BM25 against a hand-computed reference, reciprocal
rank fusion, and the tower's fused ranking of chunks and of focus sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tiny

from nexus.knowledge.lexical import BM25, reciprocal_rank_fusion, words

TEXTS = [
    "Run nexus run --fresh to start the pipeline over.",
    "The pipeline writes results/status.json after every step; status status.",
    "Pause the pipeline with nexus pause.",
]


def test_bm25_matches_the_formula():
    bm = BM25(TEXTS, k1=1.2, b=0.75)
    docs = [words(t) for t in TEXTS]
    avg = sum(map(len, docs)) / len(docs)

    def reference(query: str, doc: list[str]) -> float:
        total = 0.0
        for term in dict.fromkeys(words(query)):
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(doc) / avg))
        return total

    for query in ("status file of the pipeline", "start over fresh", "pause", "nothing matches"):
        expected = [reference(query, d) for d in docs]
        assert np.allclose(bm.scores(query), expected, rtol=1e-5)
    assert bm.top("Which file holds status?", 3) == [1]  # only texts that share a word
    assert bm.top("how do I start the pipeline over", 2)[0] == 0
    assert BM25([]).top("anything", 3) == []


def test_reciprocal_rank_fusion():
    # 7 is 2nd and 1st: 1/62 + 1/61 beats 3's 1/61 + 1/63 and 5's single 1/61
    assert reciprocal_rank_fusion([[3, 7, 5], [7, 9, 3]]) == [7, 3, 9, 5]
    assert reciprocal_rank_fusion([[1, 2]], k=0) == [1, 2]
    assert reciprocal_rank_fusion([[], [4]]) == [4]


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    docs = tmp_path_factory.mktemp("hybrid-docs")
    # Twelve chunks about options in general; one, mostly about other things, names the option.
    for i in range(12):
        (docs / f"options-{i}.md").write_text(
            f"# Command options, part {i}\n\nEach option changes how a command runs. Options are read "
            f"once, at start, and option {i} is one of them.\n",
            encoding="utf-8",
        )
    (docs / "misc.md").write_text(
        "# Miscellany\n\nThe colour scheme follows the terminal. Logs go to stderr. Passing --zq7 keeps "
        "the shards in memory.\n",
        encoding="utf-8",
    )
    return tiny.build_tower(docs, tmp_path_factory.mktemp("hybrid-index"))


def test_hybrid_retrieval_ranks_the_chunk_that_shares_the_rare_word_first(tower):
    question = "What does --zq7 do?"
    assert tower.hybrid is False  # the tower's default (DEFAULT_HYBRID)
    dense = tower.retrieve(question, k=4)
    tower.hybrid = True
    try:
        hybrid = tower.retrieve(question, k=4)
        assert "--zq7" in hybrid[0].text and [c.rank for c in hybrid] == [1, 2, 3, 4]
        assert {c.row for c in hybrid} == {c.row for c in dense}  # fused from the same candidates here
        # the score stays the cosine similarity, whichever ranking found the chunk
        vector = tower.embedder.embed([question])[0]
        for c in hybrid:
            assert c.score == pytest.approx(float(tower.index.reconstruct(c.row) @ vector), abs=1e-5)
        assert "--zq7" in tower.select_context(question, k=1, focus=1)[0].text
    finally:
        tower.hybrid = False
    # by cosine alone a chunk about options in general comes first
    assert "--zq7" not in dense[0].text
    assert "--zq7" not in tower.select_context(question, k=1, focus=1)[0].text
