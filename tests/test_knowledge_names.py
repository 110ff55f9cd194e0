"""Keeping the retrieved chunks that name what the question names (``match_names``, on in the chat
by default): the names a question uses, the filter, and the tower's context with and without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny

from nexus.knowledge.tower import Retrieved, keep_named, names_missing, question_names


def test_question_names_are_the_capitalised_words_after_the_first():
    assert question_names("How many books do the Ulwen Reading Rooms hold?") == ["Ulwen", "Reading", "Rooms"]
    assert question_names("What does NIWT measure, and does NIWT need a GPU?") == ["NIWT", "GPU"]
    assert question_names("Ulwen: how many books?") == []  # the first word is capitalised anyway
    assert question_names("how do I pause the pipeline?") == []  # "I" is no name


def test_rare_words_the_chunks_hold_are_names_in_any_case():
    common = {"how", "many", "beds", "does", "hut", "have", "who", "runs"}.__contains__
    texts = ["Praeb Hut: Praeb Hut sleeps 40 walkers."]
    assert question_names("how many beds does praeb hut have?", common, texts) == ["praeb"]
    assert question_names("Praeb Hut: how many beds?", common, texts) == ["Hut", "Praeb"]  # first word too
    assert question_names("who runs praeeb hut?", common, texts) == []  # a typo no chunk holds
    assert question_names("how many beds does praeb hut have?") == []  # no vocabulary: capitals only


def test_names_missing_reads_whole_words():
    assert names_missing(["Ulwen", "Rooms"], "The Ulwen Reading Rooms' shelves") == []
    assert names_missing(["Ulwen"], "Ulwen's shelves") == []
    assert names_missing(["Ulwen", "Ploser"], "Ulwenby and Yarploser") == ["Ulwen", "Ploser"]
    assert names_missing(["Router", "NIWT"], "the router phase; niwt") == []  # any case


def _chunk(rank: int, text: str) -> Retrieved:
    return Retrieved(rank, 0.5, text, f"doc{rank}.md", 0, rank)


def test_keep_named_keeps_the_chunks_naming_everything_else_all():
    chunks = [_chunk(1, "a"), _chunk(2, "b"), _chunk(3, "c")]
    texts = [
        "Uljebnim Reading Rooms: 82655 books.",
        "Ulwen Reading Rooms: 26483 books.",
        "Ulwenby: a village.",
    ]
    kept = keep_named(["Ulwen", "Reading"], chunks, texts)
    assert [c.text for c in kept] == ["b"] and kept[0].rank == 1  # whole words: "Ulwenby" is not Ulwen
    assert keep_named(["Ploser"], chunks, texts) == chunks  # no chunk names it: nothing is dropped
    assert keep_named([], chunks, texts) == chunks
    two = keep_named(["Reading"], chunks, texts)
    assert [c.text for c in two] == ["a", "b"] and [c.rank for c in two] == [1, 2]


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    docs = tmp_path_factory.mktemp("named-docs")
    for name, books, code in (("Ulwen", 26483, "HPW"), ("Uljebnim", 82655, "RML"), ("Ploser", 5120, "BZC")):
        (docs / f"{name.lower()}.md").write_text(
            f"# {name} Reading Rooms\n\nThe {name} Reading Rooms are a lending library. Its shelves hold "
            f"{books} books. To renew a book, send the code RENEW-{code} to the library's number.\n",
            encoding="utf-8",
        )
    return tiny.build_tower(docs, tmp_path_factory.mktemp("named-index"))


def test_select_context_keeps_only_the_named_library(tower):
    question = "How many books do the Ulwen Reading Rooms hold?"
    every = tower.select_context(question, k=4, focus=2)
    assert len({c.source for c in every}) > 1  # the neighbours' chunks come along by default
    named = tower.select_context(question, k=4, focus=2, match_names=True)
    assert [Path(c.source).name for c in named] == ["ulwen.md"] and "26483" in named[0].text
    assert tower.last_retrieved == named
    # a name no chunk has: nothing is dropped (the chat's unknown-name rule declines it instead)
    other = "How many books do the Ambleside Reading Rooms hold?"
    assert tower.select_context(other, k=3, match_names=True) == tower.select_context(other, k=3)


def test_masked_takes_the_names_out_of_every_text():
    from nexus.knowledge.tower import mask_names

    texts = ["What is Dunmere best known for?", "Dunmere is a village on Dunmere island.", "Dunmere"]
    assert mask_names(texts, ["Dunmere", "Kettle Cove"]) == [
        "What is best known for?",
        "is a village on island.",
        "Dunmere",  # nothing left: kept as it was
    ]
    assert mask_names(["The kettle cove"], ["Kettle Cove"]) == ["The"]
    assert mask_names(texts, []) == texts


@pytest.fixture(scope="module")
def villages(tmp_path_factory):
    docs = tmp_path_factory.mktemp("village-docs")
    for name, island, known, people in (
        ("Dunmere", "Oskarsey", "pickled herring", 412),
        ("Brackwick", "Tallholm", "rope bridges", 1380),
        ("Saltmoor", "Fennby", "blue pottery", 77),
    ):
        (docs / f"{name.lower()}.md").write_text(
            f"# {name}\n\n{name} is a fishing village on the island of {island}. The harbour master of "
            f"{name} is Agnes Pell. The village is best known for its {known}. About {people} people "
            f"live in {name} all year round.\n",
            encoding="utf-8",
        )
    return tiny.build_tower(docs, tmp_path_factory.mktemp("village-index"))


@pytest.mark.parametrize("name, known", [("Dunmere", "pickled herring"), ("Brackwick", "rope bridges")])
def test_focus_within_the_named_document_ranks_what_is_asked_not_the_name(villages, name, known):
    # the sentences that repeat the name outrank the one that answers by the embedder's cosine alone
    question = f"What is {name} best known for?"
    plain = villages.select_context(question, k=4, focus=2)
    assert not any(known in c.text for c in plain)
    named = villages.select_context(question, k=4, focus=2, match_names=True)
    assert [Path(c.source).name for c in named] == [f"{name.lower()}.md"]
    assert known in named[0].text


@pytest.fixture(scope="module")
def huts(tmp_path_factory):
    docs = tmp_path_factory.mktemp("hut-docs")
    for name, warden, beds in (
        ("Karnel", "Agnes Pell", 40),
        ("Tobbrin", "Ivo Marsh", 22),
        ("Dreskel", "Una Vale", 31),
        ("Molvarn", None, 18),  # names no warden
    ):
        said = f"The warden of {name} Hut is {warden}. " if warden else ""
        (docs / f"{name.lower()}.md").write_text(
            f"# {name} Hut\n\n{name} Hut is a mountain hut above the lake. {said}{name} Hut sleeps {beds} "
            f"walkers. {name} Hut was built in 19{beds}.\n",
            encoding="utf-8",
        )
    return tiny.build_tower(docs, tmp_path_factory.mktemp("hut-index"))


def test_a_peer_that_says_more_than_the_named_document_is_kept_aside(huts):
    # Molvarn's page names no warden; the other huts' pages do: the chat declines that question
    huts.select_context("Who is the warden of Molvarn Hut?", k=4, focus=2, match_names=True)
    assert huts.last_peer is not None and Path(huts.last_peer.source).name != "molvarn.md"
    for question in ("Who is the warden of Karnel Hut?", "How many walkers does Molvarn Hut sleep?"):
        kept = huts.select_context(question, k=4, focus=2, match_names=True)
        assert huts.last_peer is None and len(kept) == 1
    huts.select_context("Who is the warden of Molvarn Hut?", k=4, focus=2)  # without match_names: no check
    assert huts.last_peer is None
    # typed in lower case: "molvarn" is no common word and the chunks hold it, so it is the name
    assert not huts.embedder.knows_word("molvarn") and huts.embedder.knows_word("warden")
    huts.select_context("who is the warden of molvarn hut?", k=4, focus=2, match_names=True)
    assert huts.last_peer is not None and Path(huts.last_peer.source).name != "molvarn.md"
    kept = huts.select_context("how many walkers does molvarn hut sleep?", k=4, focus=2, match_names=True)
    assert huts.last_peer is None and [Path(c.source).name for c in kept] == ["molvarn.md"]
