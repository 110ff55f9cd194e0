"""Retrieval-grounded QA rows (nexus.data.grounded): questions from docstrings, answers that the
context holds, the chat's own RAG layout, determinism."""

from __future__ import annotations

import pytest

from nexus.data import grounded
from nexus.data.corpus import load_source
from nexus.data.grounded import api_qa_examples, grounded_qa_examples, guide_qa_examples, stdlib_entries
from nexus.knowledge.tower import DEFAULT_LAYOUT, QUESTION_PREFIX

MODULE = '''
"""A fictional module."""

def frobnicate(path, *, depth=2):
    """Return the frobnicated form of a path.

    Deeper levels take longer.
    """

def exists(path):
    """Return True if the frobnicated path exists."""

class Vault:
    """A store of secrets. To open a vault, call unlock() with the passphrase."""

    def __init__(self, passphrase):
        pass

    def lock(self, level=1):
        """Lock the vault at the given level."""

def _private():
    """Copy nothing."""

def undocumented():
    pass
'''


@pytest.fixture(autouse=True)
def whole_chunks(monkeypatch):
    """These tests are about what the rows say; sentence focus (FOCUS) is tested in
    tests/test_knowledge_focus.py."""
    monkeypatch.setattr(grounded, "FOCUS", 0)


def write_module(tmp_path):
    (tmp_path / "frob.py").write_text(MODULE)
    (tmp_path / "_hidden.py").write_text('def f():\n    """Copy a thing."""\n')
    return tmp_path


def test_entries_are_public_documented_functions_methods_and_classes(tmp_path):
    entries = stdlib_entries(write_module(tmp_path))
    assert [e.call for e in entries] == [
        "frob.frobnicate(path, *, depth=2)",
        "frob.exists(path)",
        "frob.Vault(passphrase)",
        "frob.Vault.lock(level=1)",  # self dropped
    ]
    assert entries[0].text.startswith(
        "### `frob.frobnicate(path, *, depth=2)`\n\nReturn the frobnicated form"
    )


def test_questions_come_from_docstrings_and_the_context_holds_the_answer(tmp_path):
    examples = api_qa_examples(100, seed=0, root=write_module(tmp_path))
    pairs = {ex.prompt.rsplit(QUESTION_PREFIX, 1)[1]: ex.response for ex in examples}
    assert pairs == {
        "How do I get the frobnicated form of a path?": "To get the frobnicated form of a path, call `frob.frobnicate(path, *, depth=2)`.",
        "What does `frob.frobnicate` do?": "`frob.frobnicate` returns the frobnicated form of a path.",
        "How do I check if the frobnicated path exists?": "To check if the frobnicated path exists, call `frob.exists(path)`.",
        "What does `frob.exists` do?": "`frob.exists` returns True if the frobnicated path exists.",
        "How do I open a vault?": "To open a vault, call unlock() with the passphrase.",
        "How do I lock the vault at the given level?": "To lock the vault at the given level, call `frob.Vault.lock(level=1)`.",
        "What does `frob.Vault.lock` do?": "`frob.Vault.lock` locks the vault at the given level.",
    }
    for ex in examples:
        context = ex.prompt.rsplit(QUESTION_PREFIX, 1)[0]
        assert DEFAULT_LAYOUT.chunk_header.format(i=1, source="frob.md") + "### `frob." in context
        named = ex.response.split("`")[1] if "`" in ex.response else "frob.Vault(passphrase)"
        assert named.split("(")[0] in context  # the entry that answers is always in the context
        assert ex.kind == "chat" and ex.domain == "chat"


def test_rows_are_deterministic_and_reach_the_builtin_source():
    first = grounded_qa_examples(20, seed=3)
    assert [(e.prompt, e.response) for e in first] == [
        (e.prompt, e.response) for e in grounded_qa_examples(20, seed=3)
    ]
    assert [e.prompt for e in first] != [e.prompt for e in grounded_qa_examples(20, seed=4)]
    rows = load_source("builtin:code=0,math=0,chat=0,rag=12")
    assert len(rows) == 12 and all(QUESTION_PREFIX in r.prompt and r.response for r in rows)


def test_guide_answers_are_one_sentence_of_the_context_and_nexus_tasks_stay_out():
    examples = guide_qa_examples(200, seed=1)
    assert len(examples) == 200
    for ex in examples:
        context, question = ex.prompt.rsplit(QUESTION_PREFIX, 1)
        task = question.removeprefix("How do I ").removesuffix("?")
        assert ex.response.startswith(f"To {task}, ")
        assert context.count(ex.response) == 1 and context.count(f"To {task},") == 1  # one answer only
    text = " ".join(ex.prompt for ex in examples).lower()
    for nexus_word in ("pause", "resume", "stop", "status", "index", "pipeline", "training"):
        assert nexus_word not in text  # questions about Nexus stay held out


def test_mix_interleaves_facts_with_guides_and_api_entries():
    mixed = grounded_qa_examples(12, seed=0)
    kinds = [ex.source.split(":")[1] for ex in mixed]
    assert kinds[:4] == ["rag-fact", "rag", "rag-fact", "rag-guide"]
    assert kinds.count("rag-fact") == 6 and kinds.count("rag-guide") == 3


def test_fact_rows_answer_from_the_asked_profile_or_decline():
    from nexus.data.grounded import ABSTAIN_ANSWER, fact_rows, is_abstention

    rows = fact_rows(300, seed=5)
    assert len(rows) == 300
    declined = [row for row in rows if row.absent]
    assert 0.1 < len(declined) / len(rows) < 0.3
    assert {row.qtype for row in rows} == {"who", "when", "how-many", "what", "how-to"}
    assert {row.qtype for row in declined} >= {"when", "how-many", "what", "how-to"}
    questions = {row.example.prompt.rsplit(QUESTION_PREFIX, 1)[1] for row in rows}
    openings = {q.split()[0] for q in questions}
    assert {"Who", "When", "How", "What", "Which", "In", "Since"} <= openings  # several phrasings
    assert len({row.example.response.split()[0] for row in rows}) > 20  # not one answer template
    for row in rows:
        context = row.example.prompt.rsplit(QUESTION_PREFIX, 1)[0]
        if row.absent:
            assert row.example.response == ABSTAIN_ANSWER
            assert row.profile.text not in context or row.qtype not in row.profile.facts
        else:
            value = row.profile.facts[row.qtype]
            assert row.profile.text in context and value in context
            assert value.lower() in row.example.response.lower() and not is_abstention(row.example.response)
            # the other profiles in the context are about other entities
            assert context.count(row.profile.name.removeprefix("the ")) >= 1


def test_abstention_is_recognised():
    from nexus.data.grounded import ABSTAIN_ANSWER, is_abstention

    assert is_abstention(ABSTAIN_ANSWER) and is_abstention("Sorry, I don\u2019t know.")
    assert is_abstention("The documents do not mention its founder.")
    assert not is_abstention("It was founded in 1931 by Rasa Grislow.")


def test_the_mix_covers_facts_guides_and_the_api():
    from collections import Counter

    rows = grounded_qa_examples(40, seed=0)
    kinds = Counter(ex.source.split(":")[1] for ex in rows)
    assert kinds == {"rag-fact": 20, "rag-guide": 10, "rag": 10}
