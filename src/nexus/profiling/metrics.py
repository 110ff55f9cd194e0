"""Pure scoring math: probe metrics, sensitivities, rank correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def probe_metrics(
    logprob_sums: Sequence[float],
    token_counts: Sequence[int],
    sequence_examples: Sequence[int],
    sequence_choices: Sequence[int],
    labels: dict[int, int],
) -> dict[str, float | None]:
    """Mean NLL of a probe set (and accuracy for multiple choice).

    One value per sequence: the summed log-probability of its scored tokens and their count.
    ``nll`` is the mean over examples of each example's per-token NLL (every probe weighs the
    same, however long); for a multiple-choice example it is the NLL of its right choice.
    ``accuracy`` (multiple choice only) is the fraction of items whose right choice has the
    highest summed log-likelihood (ties count as wrong).
    """
    per_example: dict[int, list[tuple[int, float, int]]] = {}
    for total, count, example, choice in zip(
        logprob_sums, token_counts, sequence_examples, sequence_choices, strict=True
    ):
        per_example.setdefault(example, []).append((choice, float(total), int(count)))
    nlls, correct = [], []
    for example, entries in per_example.items():
        if example in labels:
            by_choice = {c: (s, n) for c, s, n in entries}
            right = labels[example]
            s, n = by_choice[right]
            nlls.append(-s / n)
            best_other = max(v[0] for c, v in by_choice.items() if c != right)
            correct.append(s > best_other)
        else:
            ((_, s, n),) = entries
            nlls.append(-s / n)
    return {
        "nll": float(np.mean(nlls)),
        "accuracy": float(np.mean(correct)) if labels else None,
    }


def relative_increase(base: float, value: float) -> float:
    """Sensitivity: ``(value - base) / base`` (0 when the perturbation changes nothing)."""
    return (value - base) / base if base else math.inf if value > base else 0.0


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation; None when undefined (fewer than 2 points or a constant side)."""
    if len(a) != len(b):
        raise ValueError("spearman needs two sequences of the same length")
    if len(a) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
