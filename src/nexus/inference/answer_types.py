"""What kind of answer a question asks for, and whether a text holds one: the chat declines a
question asking *how many* or *in what year* when none of the sentences it kept holds a number or
a year (answer-type checking, as question-answering systems have done since TREC QA). Questions of
other kinds (who, what, how to, "when should I ...") are not checked: their answers have no form
that a pattern could find."""

from __future__ import annotations

import re

_NUMBER_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|"
    r"thousands?|millions?|billions?|dozens?"
)
_MONTHS = r"january|february|march|april|june|july|august|september|october|november|december"  # not "may"

# question patterns (lower-cased, whitespace-normalised) -> the kind of answer they ask for
_KINDS = (
    ("number", re.compile(r"^(how many|how much|what is the number of|what number of)\b")),
    ("year", re.compile(r"^(in what year|in which year|what year|which year|since what year|since when|when (was|were|did))\b")),
)  # fmt: skip
_HOLDS = {
    "number": re.compile(rf"\d|\b({_NUMBER_WORDS})\b", re.IGNORECASE),
    # a year from 1000 to 2099, a month, or a century / decade named in words
    "year": re.compile(rf"\b(1\d{{3}}|20\d{{2}})s?\b|\b({_MONTHS}|century|decade)\b", re.IGNORECASE),
}


def answer_kind(question: str) -> str | None:
    """``"number"`` for how-many questions, ``"year"`` for in-what-year / since-when / when-was
    questions, else None."""
    text = " ".join(question.lower().split())
    for kind, pattern in _KINDS:
        if pattern.search(text):
            return kind
    return None


def holds_kind(text: str, kind: str) -> bool:
    """Whether ``text`` holds an answer of ``kind`` (a number, a year)."""
    return bool(_HOLDS[kind].search(text))


# Words a question shares with any sentence: function words, question words, light verbs.
_STOP = frozenset(
    re.findall(
        r"\w+",
        "a an the of at in on to for from by with is are was were be been being do does did done i you it its "
        "what which who whom whose when where why how many much there have has had should can could would will "
        "may might must my me we our your their they them this that these those get got make made go "
        "about some any and or not",
    )
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` longer than two letters, function and question words aside."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in _STOP}


def _same_stem(a: str, b: str) -> bool:
    """One word begins the other ("sell" / "sells", "found" / "founder"), or they share their
    first five letters ("opened" / "opening")."""
    return a.startswith(b) or b.startswith(a) or a[:5] == b[:5] and len(a) >= 5 and len(b) >= 5


def mentions_what_is_asked(question: str, texts: list[str]) -> bool:
    """Whether one of ``texts`` holds a content word of ``question`` (:func:`content_words`, matched
    by stem). Pass both with the names masked out: what is left of "How many people work at
    Yarockgra Provisions?" is what it asks, and "It employs 35 people." mentions it. False when the
    question has no content word left ("How do I get to?": nothing to find)."""
    asked = content_words(question)
    if not asked:
        return False
    held = set().union(*(content_words(t) for t in texts)) if texts else set()
    return any(_same_stem(a, b) for a in asked for b in held)
