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
