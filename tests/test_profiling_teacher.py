"""The profiler on the real default teacher (slow: `make test-slow`)."""

from __future__ import annotations

import math

import pytest

from nexus.profiling.config import ProfileConfig
from nexus.profiling.phase import load_profile, run_profile


@pytest.mark.slow
def test_default_teacher_profile_with_builtin_probes(tmp_path):
    cfg = ProfileConfig(
        model="default", layers=[0, 14, 29], num_probes=4, max_tokens=128, chat_max_new_tokens=24
    )
    summary = run_profile(cfg, results_dir=tmp_path)
    profile = load_profile(summary["profile"])
    assert profile["model"]["num_layers"] == 30 and profile["model"]["precision"] in ("bf16", "fp32")
    for cap in ("code", "math", "chat"):
        c = profile["capabilities"][cap]
        assert 0 < c["baseline"]["nll"] < 6
        assert all(math.isfinite(s) for s in c["sensitivity"])
        # Removing the first block of a trained LM breaks it; a middle block costs much less.
        assert c["sensitivity"][0] > c["sensitivity"][1] > -0.05
        assert len(c["block_influence"]) == 30
