"""Student plans, alignment and rank correlation on hand-made profiles (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import tiny

from nexus.errors import NexusError
from nexus.models import build_student
from nexus.profiling.alignment import alignment, default_layer_map
from nexus.profiling.config import PlanConfig
from nexus.profiling.metrics import probe_metrics, rankdata, relative_increase, spearman
from nexus.profiling.plan import load_plan, make_plan, save_plan, select_layers


def fake_profile(sens: dict[str, list[float]], *, layer_params: int = 100, fixed: int = 1000) -> dict:
    n = len(next(iter(sens.values())))
    return {
        "format": "nexus-niwt-profile",
        "name": "fake",
        "model": {
            "spec": "fake-teacher",
            "identity": "abc123",
            "architecture": "LlamaForCausalLM",
            "num_layers": n,
            "parameters": fixed + n * layer_params,
            "layer_parameters": [layer_params] * n,
        },
        "perturbation": "removal",
        "layers": list(range(n)),
        "capabilities": {c: {"sensitivity": list(v), "sha256": c} for c, v in sens.items()},
    }


RNG = np.random.default_rng(0)
PROFILE = fake_profile({c: list(RNG.random(12)) for c in ("code", "math", "chat")})


@pytest.mark.parametrize("target", [1, 2, 5, 11, 12])
def test_plan_respects_target_order_and_uniqueness(target):
    cfg = PlanConfig(keep_layers=target, protect_first=target >= 2, protect_last=target >= 2)
    plan = make_plan(PROFILE, cfg)
    keep = plan["keep_layers"]
    assert len(keep) == target
    assert keep == sorted(set(keep))
    assert plan["layer_map"] == {str(s): t for s, t in enumerate(keep)}
    assert sorted(keep + plan["removed_layers"]) == list(range(12))
    if target >= 2:
        assert keep[0] == 0 and keep[-1] == 11


def test_plan_removes_least_important_and_anchors_kept_critical_layers():
    sens = [0.9, 0.01, 0.5, 0.02, 0.8, 0.03, 0.6, 0.7]
    other = [0.1, 0.2, 0.05, 0.9, 0.3, 0.0, 0.4, 0.6]
    profile = fake_profile({"code": sens, "math": other})
    plan = make_plan(
        profile, PlanConfig(keep_layers=5, protect_first=False, protect_last=False, critical_per_capability=2)
    )
    mean = [(a + b) / 2 for a, b in zip(sens, other, strict=True)]
    expected = sorted(sorted(range(8), key=lambda i: -mean[i])[:5])
    assert plan["keep_layers"] == expected
    assert plan["critical_layers"] == {"code": [0, 4], "math": [3, 7]}
    student_of = {t: s for s, t in enumerate(plan["keep_layers"])}
    kept_critical = {t for layers in plan["critical_layers"].values() for t in layers if t in student_of}
    assert plan["anchor_pairs"] == sorted([student_of[t], t] for t in kept_critical)


def test_block_influence_criterion_ranks_by_block_influence_and_keeps_sensitivity_anchors():
    sens = [0.9, 0.01, 0.5, 0.02, 0.8, 0.03]
    influence = [0.9, 0.8, 0.01, 0.7, 0.02, 0.6]
    profile = fake_profile({"chat": sens})
    profile["capabilities"]["chat"]["block_influence"] = influence
    cfg = dict(keep_layers=3, protect_first=False, protect_last=False, critical_per_capability=1)
    assert make_plan(profile, PlanConfig(**cfg))["keep_layers"] == [0, 2, 4]
    plan = make_plan(profile, PlanConfig(**cfg, criterion="block_influence"))
    assert plan["keep_layers"] == [0, 1, 3]
    assert plan["critical_layers"] == {"chat": [0]}  # anchors still come from the ablation
    with pytest.raises(ValueError, match="criterion"):
        PlanConfig(keep_layers=3, criterion="random")


def test_protect_above_keeps_a_layer_one_capability_hangs_on():
    """Block Influence would drop layer 2, but removing it alone costs `rag` +80%: it stays, and the
    criterion's next choice goes instead."""
    chat = [0.9, 0.2, 0.1, 0.3, 0.05, 0.6]
    rag = [0.9, 0.1, 0.8, 0.1, 0.2, 0.7]
    influence = [0.9, 0.5, 0.01, 0.4, 0.02, 0.6]
    profile = fake_profile({"chat": chat, "rag": rag})
    for cap in ("chat", "rag"):
        profile["capabilities"][cap]["block_influence"] = influence
    cfg = dict(keep_layers=4, criterion="block_influence")
    assert make_plan(profile, PlanConfig(**cfg))["removed_layers"] == [2, 4]
    plan = make_plan(profile, PlanConfig(**cfg, protect_above=0.5))
    assert plan["removed_layers"] == [3, 4] and plan["protected_layers"] == [0, 2, 5]
    with pytest.raises(NexusError, match="protect_above"):
        make_plan(profile, PlanConfig(keep_layers=2, protect_above=0.5))
    with pytest.raises(ValueError, match="protect_above"):
        PlanConfig(keep_layers=4, protect_above=-1)


def test_plan_parameter_budget():
    # 1000 fixed + 100 per layer: 1650 fits 6 layers.
    plan = make_plan(PROFILE, PlanConfig(param_budget=1650))
    assert len(plan["keep_layers"]) == 6
    assert plan["student_parameters"] == 1600
    with pytest.raises(NexusError, match="does not fit"):
        make_plan(PROFILE, PlanConfig(param_budget=1050))
    with pytest.raises(NexusError, match="not smaller than the teacher"):
        make_plan(PROFILE, PlanConfig(param_budget=5000))


def test_plan_target_larger_than_teacher_is_refused():
    with pytest.raises(NexusError, match="larger than the teacher"):
        make_plan(PROFILE, PlanConfig(keep_layers=13))
    with pytest.raises(ValueError):
        PlanConfig(keep_layers=0)


def test_rescoring_is_called_every_k_removals_and_changes_the_choice():
    importance = {i: float(i) for i in range(10)}
    calls = []

    def rescorer(keep):
        calls.append(list(keep))
        # After the first round, the highest layers become the least important.
        return {i: -float(i) for i in keep}

    keep, removals = select_layers(importance, 10, 4, rescore_every=2, rescorer=rescorer)
    assert calls == [[2, 3, 4, 5, 6, 7, 8, 9], [2, 3, 4, 5, 6, 7]]
    assert [r["layer"] for r in removals] == [0, 1, 9, 8, 7, 6]
    assert keep == [2, 3, 4, 5]


def test_plan_roundtrip_and_build_student(tmp_path, tiny_tokenizer):
    profile = fake_profile({"code": [0.5, 0.1, 0.3, 0.9]})
    plan = make_plan(profile, PlanConfig(keep_layers=3, protect_first=False, protect_last=False))
    path = save_plan(plan, tmp_path / "student_plan.json")
    loaded = load_plan(path, teacher_num_layers=4)
    assert loaded["keep_layers"] == [0, 2, 3]
    assert loaded["layer_map"] == {0: 0, 1: 2, 2: 3}
    teacher = tiny.build_model("llama", tiny_tokenizer, num_layers=4)
    student = build_student(teacher, loaded["keep_layers"])
    assert student.config.nexus_student["keep_layers"] == [0, 2, 3]
    with pytest.raises(NexusError, match="4 layers, this teacher has 30"):
        load_plan(path, teacher_num_layers=30)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(keep_layers=[0, 2, 2]), "distinct increasing"),
        (lambda p: p.update(keep_layers=[3, 0, 2]), "distinct increasing"),
        (lambda p: p["layer_map"].update({"1": 1}), "does not match"),
        (lambda p: p.update(anchor_pairs=[[0, 3]]), "anchor pair"),
        (lambda p: p.pop("keep_layers"), "missing 'keep_layers'"),
        (lambda p: p.update(format="other"), "not a Nexus student plan"),
    ],
)
def test_load_plan_rejects_inconsistent_plans(tmp_path, edit, message):
    plan = make_plan(fake_profile({"code": [0.5, 0.1, 0.3, 0.9]}), PlanConfig(keep_layers=3))
    edit(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(NexusError, match=message):
        load_plan(path)


def test_alignment_of_a_profile_with_itself_is_perfect():
    result = alignment(PROFILE, PROFILE, default_layer_map(12, 12))
    assert result["overall"] == pytest.approx(1.0)
    for cap in result["capabilities"].values():
        assert cap["spearman"] == pytest.approx(1.0)
        assert cap["agreement"] == 1.0
        assert cap["confusion"]["teacher_only"] == cap["confusion"]["student_only"] == 0


def test_alignment_maps_student_layers_and_detects_misalignment():
    teacher = fake_profile({"code": [0.9, 0.0, 0.5, 0.0, 0.3, 0.8]})
    aligned = fake_profile({"code": [1.5, 0.9, 0.6, 1.2]})  # student of layers [0, 2, 4, 5]
    reversed_ = fake_profile({"code": [0.0, 0.6, 0.9, 0.05]})
    good = alignment(teacher, aligned, [0, 2, 4, 5], threshold=0.1)
    bad = alignment(teacher, reversed_, [0, 2, 4, 5], threshold=0.1)
    assert good["capabilities"]["code"]["spearman"] == pytest.approx(1.0)
    assert good["capabilities"]["code"]["confusion"] == {
        "both": 4,
        "teacher_only": 0,
        "student_only": 0,
        "neither": 0,
    }
    assert bad["capabilities"]["code"]["spearman"] < 0
    assert bad["capabilities"]["code"]["confusion"]["teacher_only"] == 2
    assert bad["overall"] < good["overall"]


def test_default_layer_map():
    assert default_layer_map(30, 20, list(range(20))) == {i: i for i in range(20)}
    assert default_layer_map(4, 4) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert default_layer_map(7, 3) == {0: 0, 1: 3, 2: 6}


def test_spearman_matches_scipy_with_ties():
    a = [0.3, 0.1, 0.1, 0.9, 0.5, 0.5, 0.2]
    b = [1.0, 0.2, 0.3, 0.7, 0.7, 0.1, 0.0]
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert list(rankdata(a)) == list(scipy.stats.rankdata(a))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_probe_metrics_nll_and_accuracy():
    # two plain examples (per-token NLL 1.0 and 3.0) -> mean 2.0
    m = probe_metrics([-2.0, -9.0], [2, 3], [0, 1], [-1, -1], {})
    assert m == {"nll": pytest.approx(2.0), "accuracy": None}
    # two MC items: item 0 right (choice 0 better), item 1 wrong (label 1 worse)
    m = probe_metrics([-1.0, -4.0, -2.0, -6.0], [1, 2, 1, 3], [0, 0, 1, 1], [0, 1, 0, 1], {0: 0, 1: 1})
    assert m["accuracy"] == 0.5
    assert m["nll"] == pytest.approx((1.0 + 2.0) / 2)
    assert relative_increase(2.0, 3.0) == 0.5
