import math

import numpy as np
import pytest

from nexus.benchmark.stats import agreement_rate, bootstrap_gap_ci, mcnemar_exact, percentile


def test_mcnemar_exact_known_value():
    # b=10 (only teacher right), c=2 (only student right): p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    teacher = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    student = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    result = mcnemar_exact(teacher, student)
    assert (result["b"], result["c"]) == (10, 2)
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert result["p_value"] == pytest.approx(0.0386, abs=1e-4)


def test_mcnemar_symmetric_and_capped():
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0  # b=c=1 -> 2 * 3/4 capped at 1
    assert mcnemar_exact([True, True], [True, True]) == {"b": 0, "c": 0, "p_value": 1.0}
    a = mcnemar_exact([True] * 7 + [False], [False] * 7 + [True])
    b = mcnemar_exact([False] * 7 + [True], [True] * 7 + [False])
    assert a["p_value"] == b["p_value"] == pytest.approx(2 * (1 + 8) / 256)


def test_bootstrap_degenerate_cases():
    assert bootstrap_gap_ci([True] * 20, [True] * 20) == (0.0, 0.0)
    assert bootstrap_gap_ci([True] * 20, [False] * 20) == (-1.0, -1.0)


def test_bootstrap_matches_normal_approximation_and_is_seeded():
    rng = np.random.default_rng(0)
    teacher = list(rng.random(400) < 0.7)
    student = [t if rng.random() < 0.8 else not t for t in teacher]
    lo, hi = bootstrap_gap_ci(teacher, student, samples=4000, seed=1)
    diff = np.asarray(student, float) - np.asarray(teacher, float)
    se = diff.std() / math.sqrt(len(diff))
    assert lo == pytest.approx(diff.mean() - 1.96 * se, abs=0.01)
    assert hi == pytest.approx(diff.mean() + 1.96 * se, abs=0.01)
    assert bootstrap_gap_ci(teacher, student, samples=500, seed=3) == bootstrap_gap_ci(
        teacher, student, samples=500, seed=3
    )


def test_agreement_and_percentile():
    assert agreement_rate([True, False, True, False], [True, False, False, True]) == 0.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([], 95) is None
    with pytest.raises(ValueError):
        agreement_rate([True], [True, False])
