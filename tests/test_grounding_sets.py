"""The grounding evaluation sets (nexus.benchmark.grounding_sets): the held-out domains share no
name with the grounded training rows, every answerable question's answer is in its document and
every absent one's is not, and the scoring counts the right things."""

from __future__ import annotations

import re

import pytest

from nexus.benchmark import grounding_sets as sets
from nexus.data import grounded


@pytest.fixture(scope="module")
def heldout():
    return sets.heldout_set()


def test_heldout_vocabulary_is_disjoint_from_the_training_generator_and_the_dev_domains():
    training = (
        set(grounded._FACT_SYLLABLES + grounded._SYLLABLES),
        set(grounded._FIRST_NAMES + grounded._LAST_NAMES),
    )
    for vocab in (sets.HELDOUT_VOCABULARY, sets.DEV_VOCABULARY):
        assert not set(vocab.syllables) & training[0]
        assert not set(vocab.first_names + vocab.families) & training[1]
    held, dev = sets.HELDOUT_VOCABULARY, sets.DEV_VOCABULARY
    assert not set(held.syllables) & set(dev.syllables)
    assert not set(held.first_names + held.families) & set(dev.first_names + dev.families)
    training_kinds = " ".join(kind[0] for kind in grounded._FACT_KINDS.values())
    for heldout_word in ("village", "librar", "shop", "island", "harbour"):
        assert heldout_word not in training_kinds


def test_no_heldout_or_dev_domain_name_reaches_a_training_row(heldout, monkeypatch):
    monkeypatch.setattr(grounded, "FOCUS", 0)  # whole chunks: a superset of what focused rows hold
    names = sets.made_up_names(heldout) | sets.made_up_names(sets.dev_domains_set())
    assert len(names) > 80  # places, islands, piers, libraries, shops, huts, bakeries, people, ...
    rows = grounded.grounded_qa_examples(800, seed=0) + grounded.fact_qa_examples(800, seed=1)
    text = "\n".join(ex.prompt + "\n" + ex.response for ex in rows)
    found = {name for name in names if re.search(rf"\b{re.escape(name)}\b", text, re.I)}
    assert not found


@pytest.mark.parametrize("which", ["heldout", "dev-domains"])
def test_answers_are_in_their_documents_and_absent_ones_are_not(which):
    from collections import Counter

    heldout = sets.heldout_set() if which == "heldout" else sets.dev_domains_set()
    counts = Counter((q.domain, q.qtype) for q in heldout.questions)
    domains = (
        ("villages", "libraries", "shops") if which == "heldout" else ("huts", "bakeries", "observatories")
    )
    for domain in domains:
        for qtype in sets.TYPES:
            assert counts[(domain, qtype)] == 2
        assert counts[(domain, "absent")] == 6
    corpus = "\n".join(text for _, text in heldout.documents)
    for q in heldout.questions:
        if q.qtype == "absent":
            assert not q.answers
            continue
        assert any(key in corpus for key in q.answers), q
    # an absent question's entity has a document, and that document leaves out the asked fact
    by_domain = {}
    for name, text in heldout.documents:
        by_domain.setdefault(name.split("-")[0], []).append(text)
    for q in heldout.questions:
        if q.qtype == "absent":
            holders = [t for t in by_domain[q.domain] if t.split("\n")[0].lstrip("# ") in q.text]
            assert len(holders) == 1


def test_sets_are_deterministic_and_dev_is_not_heldout(heldout):
    assert sets.heldout_set() == heldout
    dev = sets.dev_set()
    assert dev == sets.dev_set() and {q.qtype for q in dev.questions} >= set(sets.TYPES)
    assert not sets.made_up_names(dev) & sets.made_up_names(heldout)
    domains = sets.dev_domains_set()
    assert domains == sets.dev_domains_set() and domains.name == "dev-domains"
    assert not sets.made_up_names(domains) & sets.made_up_names(heldout)
    assert not {q.text for q in domains.questions} & {q.text for q in heldout.questions}


def test_heldout_set_is_the_one_the_reported_figures_used(heldout):
    """The documented grounding figures are on this exact set: a change to the generator that
    alters a document or question must show up here (and the figures be measured again)."""
    import dataclasses
    import hashlib
    import json

    blob = json.dumps(dataclasses.asdict(heldout), sort_keys=True).encode()
    assert (len(heldout.documents), len(heldout.questions)) == (18, 48)
    assert (
        hashlib.sha256(blob).hexdigest() == "4046e42bb89b3c932727875fcd468e19644d93a2022d803e9a284ee41f82b926"
    )


def test_scoring():
    from nexus.benchmark.grounding import has_key, score

    number = sets.Question("shops", "how-many", "How many?", ("53",))
    assert score(number, "It employs 53 people.") and not score(number, "It was built in 1953.")
    assert not score(number, "I don't know. It may be 53.")  # a hedge that declines is not right
    absent = sets.Question("shops", "absent", "Who?", ())
    assert score(absent, "I don't know. The documents do not say.") and not score(absent, "Ulla Quenby.")
    assert has_key("Run `thuwen-card --new` at the till", ("thuwen-card --new",))
