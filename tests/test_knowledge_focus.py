"""Sentence focus (nexus.knowledge.tower.focus_sentences): retrieved chunks cut down to the
sentences nearest the question, in the chat and in the grounded training rows."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nexus.knowledge.tower import Retrieved, focus_sentences, format_context


class WordEmbedder:
    """Bag of lower-cased words hashed into 256 buckets: texts that share words are similar."""

    def embed(self, texts, *, show_progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 256] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def chunk(rank: int, text: str, source: str = "a.md") -> Retrieved:
    return Retrieved(rank, 0.5, text, source, rank - 1, rank - 1)


CHUNKS = [
    chunk(1, "# Wenser\n\nWenser is a village. The harbour master of Wenser is Osric Quenby. It has a pier."),
    chunk(2, "# Ixhol\n\nIxhol is a village. The harbour master of Ixhol is Ulla Vosper.", "b.md"),
    chunk(3, "# Thuhol\n\nThuhol bakes seaweed bread.", "c.md"),
]
TITLES = ["Wenser", "Ixhol", "Thuhol"]


def test_keeps_the_nearest_sentences_after_their_title_and_drops_the_rest():
    focused = focus_sentences("Who is the harbour master of Wenser?", CHUNKS, 1, WordEmbedder(), TITLES)
    assert [(c.rank, c.source, c.text) for c in focused] == [
        (1, "a.md", "Wenser: The harbour master of Wenser is Osric Quenby.")
    ]
    two = focus_sentences("Who is the harbour master of Wenser?", CHUNKS, 2, WordEmbedder(), TITLES)
    # each chunk keeps its chosen sentences; chunks keep their rank order and are renumbered
    assert [(c.rank, c.source, c.position, c.text) for c in two] == [
        (1, "a.md", 0, "Wenser: The harbour master of Wenser is Osric Quenby."),
        (2, "b.md", 1, "Ixhol: The harbour master of Ixhol is Ulla Vosper."),
    ]
    within = focus_sentences("Wenser village pier", CHUNKS[:1], 2, WordEmbedder(), TITLES[:1])
    assert within[0].text == "Wenser: Wenser is a village. It has a pier."  # the document's order


def test_headings_are_not_sentences_and_zero_keeps_whole_chunks():
    only_heading = [chunk(1, "# Wenser")]
    assert focus_sentences("Wenser", only_heading, 2, WordEmbedder(), ["Wenser"]) == only_heading
    assert focus_sentences("Wenser", CHUNKS, 0, WordEmbedder(), TITLES) == CHUNKS
    untitled = focus_sentences("Thuhol bread", CHUNKS[2:], 1, WordEmbedder(), [""])
    assert untitled[0].text == "Thuhol bakes seaweed bread."


RAG = Path(__file__).parent / "assets" / "rag"


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    from nexus.knowledge import IndexConfig, KnowledgeTower, build_index
    from nexus.knowledge.embedder import Embedder

    out = tmp_path_factory.mktemp("focus-index")
    embedder = Embedder("default")
    build_index([RAG / "docs"], out, IndexConfig(), embedder=embedder)
    return KnowledgeTower.load(out, embedder=embedder)


def test_the_real_embedder_finds_the_answering_sentence(tower):
    questions = [
        json.loads(line) for line in (RAG / "questions.jsonl").read_text().splitlines() if line.strip()
    ]
    found = 0
    for q in questions:
        whole = tower.select_context(q["question"], k=4)
        focused = tower.select_context(q["question"], k=4, focus=2)
        assert tower.last_retrieved == focused and 1 <= len(focused) <= 2
        assert sum(len(c.text) for c in focused) < sum(len(c.text) for c in whole)
        assert {c.row for c in focused} <= {c.row for c in whole}
        found += any(q["answer"].lower() in c.text.lower() for c in focused)
    assert found >= len(questions) - 1, f"the answer survived focus for {found} of {len(questions)}"


def test_training_rows_are_focused_like_the_chat_and_decline_when_focus_drops_the_fact(monkeypatch):
    from nexus.data import grounded

    monkeypatch.setattr(grounded, "FOCUS", 2)
    rows = grounded.fact_rows(40, seed=5)
    declined_by_focus = 0
    for row in rows:
        context = row.example.prompt.split("Question: ")[0]
        assert len(re.findall(r"^Document \d+ ", context, re.M)) <= 2
        value = row.profile.facts.get(row.qtype)
        if row.example.response == grounded.ABSTAIN_ANSWER:
            declined_by_focus += value is not None  # the profile has it, focus left it out
            assert row.absent
        else:
            assert value in context and not row.absent  # the answer is in what the model sees
    assert declined_by_focus < len(rows) // 4


def test_the_token_budget_counts_the_focused_sentences_not_the_whole_chunks(tower):
    question = "What is the capital of Veloria?"
    whole = tower.select_context(question, k=4)
    cost = tower.count_tokens([format_context(whole[:1])])[0]
    assert tower.select_context(question, k=4, max_tokens=cost - 1) == []  # no whole chunk fits
    focused = tower.select_context(question, k=4, max_tokens=cost - 1, focus=2)
    assert focused and any("Quendrath" in c.text for c in focused)
