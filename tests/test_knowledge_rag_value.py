"""RAG value with the real default teacher (slow): the fictional facts are answered with RAG
and not without. Figures: benchmarks/bench_knowledge_rag_value.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RAG = Path(__file__).parent / "assets" / "rag"


def _correct(answer: str, output: str) -> bool:
    norm = lambda s: " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())  # noqa: E731
    return f" {norm(answer)} " in f" {norm(output)} "


@pytest.mark.slow
def test_rag_answers_what_the_teacher_cannot_know(tmp_path):
    from nexus.inference import ChatOptions, ChatSession, load_chat_model
    from nexus.knowledge import KnowledgeTower, build_index

    questions = [json.loads(line) for line in (RAG / "questions.jsonl").read_text().splitlines()][:8]
    build_index([RAG / "docs"], tmp_path)
    tower = KnowledgeTower.load(tmp_path)
    model, tokenizer, _ = load_chat_model("default")
    scores = {}
    for rag in (False, True):
        hits = 0
        for q in questions:
            session = ChatSession(
                model, tokenizer, tower=tower, options=ChatOptions(max_new_tokens=32, rag=rag)
            )
            hits += _correct(q["answer"], session.respond(q["question"]).text)
        scores[rag] = hits / len(questions)
    assert scores[False] <= 0.125
    assert scores[True] >= 0.5
