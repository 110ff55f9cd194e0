"""Grounded answers: does a model answer from the documents its chat retrieves, and decline when
they lack the answer? The scoring of ``benchmarks/bench_grounding.py`` and of the retention
report's "grounded" column (the sets are in :mod:`nexus.benchmark.grounding_sets`).

Each question is its own conversation through the chat's own path (``ChatSession``): retrieval
from an index of the set's documents, the chosen context layout, greedy decoding with the chat's
default repetition penalty. An answerable question is *right* when the answer contains one of its
key strings (the name, year, number, thing or command) and does not decline; an *absent* one is
right when the answer declines (``nexus.data.grounded.is_abstention``). *Context had it* counts
answerable questions whose key was in the retrieved chunks, so retrieval misses are not blamed on
the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nexus.benchmark.grounding_sets import TYPES, EvalSet, Question


def has_key(text: str, keys) -> bool:
    """Whether ``text`` names one of ``keys`` (numbers as whole numbers: "53" is not in "1953")."""
    low = " ".join(text.lower().split())
    for key in keys:
        key = " ".join(key.lower().split())
        if key.isdigit():
            if re.search(rf"(?<![\d.]){key}(?!\d)", low.replace(",", "")):
                return True
        elif key in low:
            return True
    return False


def score(question: Question, answer: str) -> bool:
    from nexus.data.grounded import is_abstention

    if question.qtype == "absent":
        return is_abstention(answer)
    return has_key(answer, question.answers) and not is_abstention(answer)


def build_set_index(
    eval_set: EvalSet, where: Path, *, fallback_docs: Sequence[Path] = (), embedder=None
) -> Path:
    """An index (``where/index``) of the set's documents, with ``nexus index build``'s defaults;
    a set without documents indexes ``fallback_docs``. ``embedder``: an already loaded one."""
    from nexus.knowledge.index import IndexConfig, build_index

    docs = Path(where) / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in eval_set.documents:
        (docs / name).write_text(text, encoding="utf-8")
    sources = [docs] if eval_set.documents else list(fallback_docs)
    build_index(sources, Path(where) / "index", IndexConfig(), embedder=embedder)
    return Path(where) / "index"


def evaluate(
    model, tokenizer, tower, questions: Sequence[Question], options=None, show: bool = False
) -> list[dict]:
    """One record per question: the answer, whether it is right, declined, had its key in context.
    ``options``: the chat's :class:`~nexus.inference.session.ChatOptions` (default: the chat's own),
    a fresh copy per question."""
    import dataclasses

    from nexus.data.grounded import is_abstention
    from nexus.inference.session import ChatOptions, ChatSession

    records = []
    options = options or ChatOptions()
    for q in questions:
        result = ChatSession(model, tokenizer, tower=tower, options=dataclasses.replace(options)).respond(
            q.text
        )
        in_context = q.qtype != "absent" and any(has_key(c.text, q.answers) for c in result.retrieved)
        record = {
            "domain": q.domain,
            "type": q.qtype,
            "question": q.text,
            "answer": result.text,
            "right": score(q, result.text),
            "declined": is_abstention(result.text),
            "in_context": in_context,
            "context": [c.text for c in result.retrieved],
            "tokens": result.new_tokens,
            "seconds": result.seconds,
        }
        records.append(record)
        if show:
            mark = (
                "right"
                if record["right"]
                else ("wrong" if in_context or q.qtype == "absent" else "not retrieved")
            )
            print(f"  [{mark}] ({q.qtype}) {q.text}\n    {' '.join(result.text.split())[:200]}", flush=True)
    return records


def summarize(records: list[dict]) -> dict:
    answerable = [r for r in records if r["type"] != "absent"]
    absent = [r for r in records if r["type"] == "absent"]

    def share(rows, key):
        return sum(r[key] for r in rows) / len(rows) if rows else float("nan")

    per_type = {t: share([r for r in answerable if r["type"] == t], "right") for t in TYPES}
    return {
        "answerable": share(answerable, "right"),
        "per_type": per_type,
        "n_answerable": len(answerable),
        "declined_absent": share(absent, "declined"),
        "n_absent": len(absent),
        "declined_answerable": share(answerable, "declined"),
        "in_context": share(answerable, "in_context"),
        "tok_s": sum(r["tokens"] for r in records) / max(sum(r["seconds"] for r in records), 1e-9),
    }
