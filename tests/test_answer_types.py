"""Answer-type checking (nexus.inference.answer_types): which questions ask for a number or a year,
and which texts hold one."""

from __future__ import annotations

import pytest

from nexus.inference.answer_types import answer_kind, holds_kind


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many goats are there at the farm?", "number"),
        ("how much does a ticket cost?", "number"),
        ("What is the number of boats at the Cormo ferry line?", "number"),
        ("In what year was the lab established?", "year"),
        ("Since when has the ferry line existed?", "year"),
        ("Since what year has the shop been trading?", "year"),
        ("When were the first houses built?", "year"),
        ("When should I use --fresh?", None),  # a condition, not a date
        ("When does the reading room close?", None),  # a time of day has no one form
        ("Who founded the club?", None),
        ("How do I pause training?", None),
    ],
)
def test_answer_kind(question, kind):
    assert answer_kind(question) == kind


def test_holds_kind():
    assert holds_kind("It counts 257 goats.", "number") and holds_kind("There are twelve players.", "number")
    assert not holds_kind("It is known for walking robots.", "number")
    assert holds_kind("It dates from 1915.", "year") and holds_kind("It opened in the 1990s.", "year")
    assert holds_kind("It opened in March.", "year") and holds_kind("It dates from the last century.", "year")
    assert not holds_kind("It counts 257 goats.", "year")  # a count is no year
    assert not holds_kind("It may open later.", "year")  # "may" is no month here


def test_content_words_leave_out_function_and_question_words():
    from nexus.inference.answer_types import content_words

    assert content_words("How many people work at the shop?") == {"people", "work", "shop"}
    assert content_words("How do I get to it?") == set()


@pytest.mark.parametrize(
    ("question", "text", "mentions"),
    [
        ("How many people work at ?", "It employs 35 people.", True),
        ("What does mainly sell?", "It mainly sells hand-ground spices.", True),
        ("Who founded the ?", "Its founder is Ivo Ellory.", True),  # one word begins the other
        ("In which year did the open?", "The library opened its doors in 1945.", True),
        ("Who runs ?", "sleeps 11 walkers. was built in 1933.", False),
        ("What does mainly sell?", "has traded since 1936. It employs 60 people.", False),
        ("How do I get to ?", "Visitors reach it by ferry 11.", False),  # nothing asked to look for
    ],
)
def test_mentions_what_is_asked(question, text, mentions):
    from nexus.inference.answer_types import mentions_what_is_asked

    assert mentions_what_is_asked(question, [text]) is mentions
