"""Copy rows (``builtin:copy=N``): a random run of words, then the same run again.

Reading an answer out of retrieved context needs the teacher's *induction* circuit: having seen
``A B ... X``, predict what followed ``X`` last time. Pruning the middle of a 30-layer SmolLM2
removes it (the default 20-layer plan copies a repeated random sequence with 1% top-1 accuracy
against the teacher's 67%), and distilling on natural text brings back little of it (12% after
phase 2). Distilling on rows that are nothing but repeats does: 30 KD steps on 600 of these rows
lift the phase-2 student to 51% (`docs/pipeline.md`, "Why the student does not read its context").

Each row is 12 to 40 words drawn uniformly from the tokenizer's own whole-word tokens (so no
word is more likely than another and only copying predicts the second half), a newline, and the
same words again. Deterministic given ``seed`` and the tokenizer.
"""

from __future__ import annotations

import random

from nexus.data.formats import Example
from nexus.errors import NexusError

MIN_WORDS, MAX_WORDS = 12, 40
MIN_VOCABULARY = 20  # fewer distinct words and a run's second half is guessable without copying


def _word_tokens(tokenizer) -> list[str]:
    """The vocabulary's whole words: tokens that decode to a space and three or more letters."""
    words = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text.startswith(" ") and len(text) >= 4 and text[1:].isalpha() and text[1:].isascii():
            words.append(text)
    return words


def copy_examples(n: int, tokenizer, seed: int = 0) -> list[Example]:
    """``n`` copy rows: plain text (trained on every token) in the chat domain."""
    if n <= 0:
        return []
    words = _word_tokens(tokenizer)
    if len(words) < MIN_VOCABULARY:
        raise NexusError(
            f"the tokenizer has {len(words)} whole-word tokens; copy rows need at least {MIN_VOCABULARY}"
        )
    rng = random.Random(f"copy:{seed}")
    rows = []
    for i in range(n):
        run = "".join(rng.choice(words) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS))).strip()
        rows.append(Example("text", f"builtin:copy:{i + 1}", "chat", text=f"{run}\n{run}"))
    return rows
