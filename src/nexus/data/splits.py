"""Evaluation splits of the public sets that serve both training and the benchmark.

One rule decides which rows are evaluation rows; the benchmark scores only those (task option
``split: eval``, the default) and the training readers (:func:`nexus.data.corpus.load_source`,
used by phases 2-4) drop them, always:

=============================================  ============================  =====================
row format (:attr:`Example.format`)            evaluation rows               shared file
=============================================  ============================  =====================
GSM8K (``question``, ``answer``)               hash of the question < 1/10   7473 rows -> 692 eval
Alpaca-style (``instruction``, ``output``;     hash of instruction + input   2017 rows -> 197 eval
Code Alpaca)                                   < 1/10
Self-Instruct user-oriented (``instances``)    hash of instruction + first   252 rows -> 50 eval
                                               instance's input < 1/5
PIQA, HumanEval                                every row (evaluation-only;   -
                                               training refuses them)
anything else (text, prompt/response,          none                          -
messages, the built-in corpus)
=============================================  ============================  =====================

The hash is the first 8 bytes of ``sha256("nexus-eval-split-v1\\0" + format + "\\0" + prompt)``
(the prompt with runs of whitespace collapsed to one space) read as a big-endian integer and
divided by 2**64. It depends on the row's text only, not on its position, so a user's own
download of the same set (any row order, JSONL or JSON, or the same rows from the hub) splits the
same way, and duplicated rows always land on the same side.

**Tune / untuned parts of the evaluation rows.** Evaluation rows still steer decisions (which
layers to keep, which recipe to ship) when those are chosen by their scores. So the evaluation
rows of PIQA are cut once more, by :func:`tuning_side`: the *untuned* part (about 1/4: the same
hash under the salt ``nexus-untuned-split-v1``, below 1/4; 357 of the 1338 shared PIQA rows) is
where **no decision may be tuned on these rows**: no plan criterion, recipe, loss weight or
default is chosen by its score there. It is only reported (``nexus retention``'s "PIQA untuned"
column), beside the *tune* part (the other ~3/4) that choices may be made on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from nexus.data.formats import Example

SPLIT_SALT = "nexus-eval-split-v1"
# Share of the rows of each format held out for evaluation.
EVAL_FRACTION = {"gsm8k": 0.10, "alpaca": 0.10, "self_instruct": 0.20}
EVAL_ONLY = ("piqa", "humaneval")  # whole sets reserved for evaluation
SPLITS = ("eval", "train", "all")
# The untuned part of the evaluation rows (see the module docstring): no decision is tuned on it.
UNTUNED_SALT = "nexus-untuned-split-v1"
UNTUNED_FRACTION = 0.25
TUNING_SIDES = ("tune", "untuned")


def split_key(example: Example, salt: str = SPLIT_SALT) -> float:
    """The row's position in [0, 1) under the stable hash (see the module docstring)."""
    prompt = " ".join(example.prompt.split())
    digest = hashlib.sha256(f"{salt}\0{example.format}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def tuning_side(example: Example) -> str:
    """``"untuned"`` for the ~1/4 of evaluation rows on which no decision may be tuned (a hash
    of the row's prompt, e.g. PIQA's goal, under :data:`UNTUNED_SALT`), else ``"tune"``."""
    return "untuned" if split_key(example, UNTUNED_SALT) < UNTUNED_FRACTION else "tune"


def split_of(example: Example) -> str | None:
    """``"eval"``, ``"train"``, or ``None`` for rows of a format with no evaluation split."""
    if example.format in EVAL_ONLY:
        return "eval"
    fraction = EVAL_FRACTION.get(example.format or "")
    if fraction is None:
        return None
    return "eval" if split_key(example) < fraction else "train"


def row_split(row: dict[str, Any]) -> str | None:
    """:func:`split_of` a raw row in any format :func:`example_from_row` reads (None otherwise)."""
    from nexus.data.formats import example_from_row
    from nexus.errors import NexusError

    try:
        return split_of(example_from_row(row, "row"))
    except NexusError:
        return None


def without_eval_rows(examples: Iterable[Example]) -> tuple[list[Example], int]:
    """The training side: ``examples`` minus the hash-split evaluation rows, and how many were
    dropped. Rows of evaluation-only sets stay, for the packer to refuse by name."""
    kept, dropped = [], 0
    for ex in examples:
        if ex.format in EVAL_FRACTION and split_of(ex) == "eval":
            dropped += 1
        else:
            kept.append(ex)
    return kept, dropped
