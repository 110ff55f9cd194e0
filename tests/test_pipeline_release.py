"""The release's choice of student: routed only when routing did not cost fidelity."""

from __future__ import annotations

import json

import pytest

from nexus.errors import NexusError
from nexus.release.config import choose_student


def make(results, key, summary=None):
    (results / key / "model").mkdir(parents=True)
    (results / key / "model" / "config.json").write_text("{}")
    if summary is not None:
        (results / key / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(("routed", "dense", "expected"), [(3.5, 0.5, "train"), (0.4, 0.5, "router")])
def test_best_compares_router_with_its_dense_start(tmp_path, routed, dense, expected):
    make(tmp_path, "train", {"eval": {"kd": 0.7}})
    make(tmp_path, "router", {"eval": {"kd": routed}, "dense_eval": {"kd": dense}})
    path, reason = choose_student("best", tmp_path)
    assert path == str(tmp_path / expected / "model") and expected in reason


def test_explicit_choices_and_fallbacks(tmp_path):
    with pytest.raises(NexusError, match="no trained student"):
        choose_student("best", tmp_path)
    make(tmp_path, "distill")
    assert choose_student("best", tmp_path)[0] == str(tmp_path / "distill" / "model")
    with pytest.raises(NexusError, match="run that phase first"):
        choose_student("router", tmp_path)
    assert choose_student("some/model", tmp_path)[0] == "some/model"
