"""The retention report (issue 16, section 1) on tiny random models: it builds from a fake results
folder, reuses its cache, shows phases that did not run, says why a failed cell failed, and its
interval and p-value helpers agree with scipy and with hand-computed values."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hash_embedder import HashEmbedder

from nexus.benchmark import stats
from nexus.cli import main
from nexus.models import build_student, save_student
from nexus.retention import report
from nexus.retention.config import RetentionConfig
from nexus.retention.run import run_retention

# Small and fast: loglik tasks, a short generation task, held-out texts and grounding.
SMALL = dict(
    measures=["piqa", "builtin-chat", "heldout", "grounding"],
    piqa_limit=8, builtin_limit=2, heldout_limit=4, grounding_limit=2,
    grounding_max_new_tokens=4, heldout_max_length=32, precision="fp32", plot=True,
)  # fmt: skip


@pytest.fixture()
def results(tmp_path, tiny_llama_dir, tiny_tokenizer, shared_data):
    """A results folder: pipeline config, a plan, phase 2 complete, phase 3 absent, phase 4
    partial (a model but no completion marker)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "results"
    (out / "profile").mkdir(parents=True)
    (out / "pipeline_config.yaml").write_text(f"teacher: {tiny_llama_dir}\nseed: 0\n")
    (out / "profile" / "student_plan.json").write_text(
        json.dumps({"keep_layers": [0, 3], "anchor_pairs": []})
    )
    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    student = build_student(teacher, [0, 3], teacher_name=str(tiny_llama_dir))
    with torch.no_grad():  # "trained": anything but the plan student's own weights
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_student(student, out / "distill" / "model", tiny_tokenizer)
    (out / "distill" / "COMPLETE.json").write_text("{}")
    shutil.copytree(out / "distill" / "model", out / "router" / "model")
    return out


def _config(shared_data, **extra) -> RetentionConfig:
    return RetentionConfig(**{**SMALL, "data_dir": str(shared_data), **extra})


def test_report_builds_from_a_results_folder_and_reuses_its_cache(results, shared_data):
    cfg = _config(shared_data)
    first = run_retention(results, cfg, embedder=HashEmbedder())
    # the router folder holds phase 2's very files: same fingerprint, its results come from the cache
    assert set(first["computed_now"]) == {"teacher", "plan", "distill"}
    md = (results / "retention.md").read_text()
    assert md == first["markdown"] and (results / "retention.png").stat().st_size > 0
    rows = {r["key"]: r for r in json.loads((results / "retention.json").read_text())["table"]["rows"]}
    assert rows["train"]["status"] == "not run" and "| after phase 3 (train) | not run |" in md
    assert rows["router"]["note"] == "partial: phase not complete"
    piqa = rows["distill"]["cells"]
    assert piqa["piqa"]["n"] == 8 and piqa["piqa_tune"]["n"] + piqa["piqa_untuned"]["n"] == 8
    lo, hi = piqa["piqa"]["ci95"]
    assert 0 <= lo <= piqa["piqa"]["value"] <= hi <= 1
    assert rows["teacher"]["cells"]["kl"] == {"missing": "reference"}  # KL of the teacher to itself
    assert rows["plan"]["cells"]["kl"]["value"] > 0 and rows["plan"]["cells"]["bpb"]["value"] > 0
    assert "of_teacher" in rows["plan"]["cells"]["piqa"]
    # the same weights: the router row's figures equal phase 2's, and the change is exactly nothing
    assert rows["router"]["cells"]["piqa"]["value"] == piqa["piqa"]["value"]
    changes = first["table"]["changes"]
    assert [(c["from"], c["to"]) for c in changes] == [("plan", "distill"), ("distill", "router")]
    assert changes[1]["columns"]["piqa"]["p"] == 1.0 and changes[1]["columns"]["bpb"]["delta"] == 0
    assert "p=" in md and "HumanEval pass@1" in md

    second = run_retention(results, cfg, embedder=HashEmbedder())  # everything cached: nothing scored
    assert second["computed_now"] == {} and second["markdown"] == first["markdown"]
    (results / "train").mkdir()
    shutil.copytree(results / "distill" / "model", results / "train" / "model")
    with torch.no_grad():  # a different train model: only it is scored
        from safetensors.torch import load_file, save_file

        weights = results / "train" / "model" / "model.safetensors"
        state = {k: v + 0.02 for k, v in load_file(weights).items()}
        save_file(state, weights, metadata={"format": "pt"})
    third = run_retention(results, cfg, embedder=HashEmbedder())
    assert set(third["computed_now"]) == {"train"}


def test_a_failing_measure_fills_its_cells_with_the_reason(results, shared_data, monkeypatch):
    import nexus.benchmark.sandbox as sandbox

    def refuse(allow: bool) -> None:
        raise sandbox.SandboxUnavailable("no namespaces here")

    monkeypatch.setattr(sandbox, "require_isolation", refuse)
    cfg = _config(shared_data, measures=["humaneval", "builtin-chat"], humaneval_limit=1, plot=False)
    out = run_retention(results, cfg)
    cells = {r["key"]: r["cells"] for r in out["table"]["rows"]}
    assert cells["teacher"]["humaneval"] == {"error": "no namespaces here"}
    assert "failed: no namespaces here" in out["markdown"] and cells["teacher"]["builtin-chat"]["n"] == 2
    assert not list((results / "retention").glob("humaneval-*"))  # failures are not cached


def test_bad_results_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["retention", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "results folder not found" in err
    (tmp_path / "empty").mkdir()
    assert main(["retention", str(tmp_path / "empty")]) != 0
    assert "not a pipeline results folder" in capsys.readouterr().err
    assert main(["retention", str(tmp_path / "empty"), "--limit", "nope=3"]) != 0


def test_wilson_interval_matches_hand_computed_values():
    # 8 of 10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), the textbook (0.490, 0.943)
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson_interval(0, 5)[0] == 0.0 and stats.wilson_interval(0, 5)[1] > 0.4
    assert stats.wilson_interval(5, 5)[1] == 1.0


def test_t_interval_and_paired_t_against_scipy():
    from scipy import stats as sp

    x = [0.8, 1.1, 0.9, 1.4, 1.0, 1.2]
    y = [0.7, 1.0, 1.0, 1.1, 0.8, 1.0]
    lo, hi = stats.mean_interval(x)
    ref = sp.t.interval(0.95, len(x) - 1, loc=sum(x) / len(x), scale=sp.sem(x))
    assert (lo, hi) == pytest.approx(ref)
    assert stats.paired_t_p(x, y) == pytest.approx(sp.ttest_rel(y, x).pvalue)
    assert stats.paired_t_p(x, x) == 1.0


def test_exact_mcnemar_by_hand_and_change_pairs_rows_by_id():
    col = report.COLUMNS[0]
    before = {"ids": ["a", "b", "c", "d", "e"], "correct": [True, True, True, False, False]}
    after = {"ids": ["e", "d", "c", "b", "a"], "correct": [True, True, True, False, False]}
    ch = report.change(before, after, col)
    # discordant pairs: a, b right only before; d, e right only after: b = c = 2 -> p = 1
    assert (ch["only_before"], ch["only_after"], ch["p"]) == (2, 2, 1.0)
    one_sided = {"ids": list("abcdefgh"), "correct": [False] * 8}
    all_right = {"ids": list("abcdefgh"), "correct": [True] * 8}
    assert report.change(one_sided, all_right, col)["p"] == pytest.approx(2 * 0.5**8)
    assert math.isclose(report.change(one_sided, all_right, col)["delta"], 1.0)


def test_release_card_has_the_retention_section_even_when_a_measure_fails(
    results, shared_data, tmp_path, monkeypatch
):
    import io
    from types import SimpleNamespace

    import nexus.benchmark.sandbox as sandbox
    from nexus.monitor import Flags, StatusPrinter
    from nexus.pipeline.runner import PipelineConfig
    from nexus.release.config import ReleaseConfig
    from nexus.release.run import run_release

    def refuse(allow: bool) -> None:
        raise sandbox.SandboxUnavailable("no namespaces here")

    monkeypatch.setattr(sandbox, "require_isolation", refuse)
    teacher = (results / "pipeline_config.yaml").read_text().split()[1]
    retention = {
        **SMALL,
        "measures": ["builtin-chat", "humaneval"],
        "humaneval_limit": 1,
        "data_dir": str(shared_data),
    }
    cfg = ReleaseConfig(
        teacher=teacher, release_dir=str(tmp_path / "rel"), docs=[str(results / "pipeline_config.yaml")],
        benchmark={"enabled": False}, profile_student=False, retention=retention,
    )  # fmt: skip
    ctx = SimpleNamespace(
        config=PipelineConfig(), results_dir=results, flags=Flags(tmp_path / "flags"),
        printer=StatusPrinter(io.StringIO()), source="test.yaml",
    )  # fmt: skip
    run_release(cfg, ctx)
    card = (tmp_path / "rel" / "README.md").read_text()
    assert "## Retention" in card and "failed: no namespaces here" in card and "built-in chat" in card
    assert "(released)" in card or "released" in card  # the row the release ships is marked
    assert (tmp_path / "rel" / "retention.png").is_file() and (results / "retention.md").is_file()
    manifest = json.loads((tmp_path / "rel" / "nexus_manifest.json").read_text())
    assert manifest["retention"]["rows"][0]["key"] == "teacher"


def test_bad_retention_section_fails_when_the_config_is_read():
    from nexus.errors import NexusError
    from nexus.release.config import ReleaseConfig

    with pytest.raises((NexusError, ValueError), match="piqa_limit"):
        ReleaseConfig(retention={"piqa_limit": 0})
    assert ReleaseConfig(retention={"enabled": False, "piqa_limit": 0}).retention_enabled is False


def test_cli_rebuilds_the_report_with_limits(results, shared_data, capsys):
    args = ["retention", str(results), "--measures", "builtin-chat,piqa", "--limit", "builtin=2",
            "--limit", "piqa_limit=4", "--precision", "fp32", "--data-dir", str(shared_data), "--no-plot"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and "built-in chat" in out and "retention.md" in out
    rows = json.loads((results / "retention.json").read_text())["table"]["rows"]
    assert rows[0]["cells"]["builtin-chat"]["n"] == 2 and rows[0]["cells"]["piqa"]["n"] == 4
    assert rows[0]["cells"]["gsm8k"] == {"missing": "not measured"}
    assert not (results / "retention.png").exists()
