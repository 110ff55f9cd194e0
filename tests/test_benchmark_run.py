import json
import re
import shutil

import pytest

from nexus.benchmark.report import render_summary_table, verdict
from nexus.benchmark.runner import BenchmarkConfig, newest_release, run_benchmark
from nexus.cli import main
from nexus.errors import NexusError


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tiny_qwen2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchmarkConfig(
        student=str(tiny_qwen2_dir),
        teacher=str(tiny_llama_dir),
        tasks=["builtin"],
        limit=3,
        max_new_tokens=6,
        batch_size=2,
        precision="fp32",
        bootstrap_samples=200,
        fidelity_items=4,
    )
    summary = run_benchmark(cfg, results_dir=out, flags=None)
    return summary, out


def test_summary_and_files(run):
    summary, out = run
    results = json.loads((out / "benchmark_results.json").read_text())
    assert {t["summary"]["name"] for t in results["tasks"]} == {
        "builtin-code",
        "builtin-math",
        "builtin-chat",
    }
    assert summary["items"] == 9
    assert summary["gap"] == pytest.approx(summary["student_accuracy"] - summary["teacher_accuracy"])
    lines = summary["console"].splitlines()
    assert re.fullmatch(r"Teacher: \d+\.\d\d%", lines[0])
    assert re.fullmatch(r"Student: \d+\.\d\d%", lines[1])
    assert re.fullmatch(r"Gap: [+-]\d+\.\d\d%", lines[2])
    fid = results["fidelity"]
    assert fid["kl_teacher_student"] > 0 and 0 <= fid["top1_agreement"] <= 1  # same tokenizer: measured
    for item in results["tasks"][0]["items"]:
        for role in ("teacher", "student"):
            assert {"output", "correct", "latency_s"} <= set(item[role])
    assert json.loads((out / "status.json").read_text())["status"] == "Completed"
    assert (out / "benchmark_config.yaml").is_file()
    assert results["models"]["teacher"]["parameters"] > 0


def test_markdown_and_json_agree(run):
    _, out = run
    results = json.loads((out / "benchmark_results.json").read_text())
    md = (out / "benchmark_comparison.md").read_text()
    assert "| Question | Teacher Output | Student Output | Correct? |" in md
    for task in results["tasks"]:
        s = task["summary"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {s['name']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == str(s["items"])
        assert (
            cells[3] == f"{100 * s['teacher_accuracy']:.2f}%"
            and cells[4] == f"{100 * s['student_accuracy']:.2f}%"
        )
        section = md.split(f"## {s['name']} (")[1].split("\n## ")[0]
        rows = [
            line
            for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| Question |", "| :---"))
        ]
        assert len(rows) == len(task["items"])
        for line, item in zip(rows, task["items"], strict=True):
            shown = line.rstrip().removesuffix("|").rsplit("|", 1)[1].strip()
            t, st = item["teacher"]["correct"], item["student"]["correct"]
            assert shown == verdict(t, st)
            assert ("Teacher ✅" in shown or shown == "✅ both") == t
            assert ("Student ✅" in shown or shown == "✅ both") == st
    assert render_summary_table(results) == render_summary_table(
        {"per_task": [t["summary"] for t in results["tasks"]], **results["overall"]}
    )


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--teacher", str(tiny_llama_dir), "--limit", "1"]) == 2
    assert "no --student given and no nexus-release-v* directory" in capsys.readouterr().err
    assert main(["benchmark", "--student", "missing-model-dir", "--teacher", str(tiny_llama_dir)]) == 2
    assert "model not found: missing-model-dir" in capsys.readouterr().err
    assert (
        main(
            ["benchmark", "--student", str(tiny_llama_dir), "--teacher", str(tiny_llama_dir), "--limit", "0"]
        )
        == 2
    )
    assert "limit must be at least 1" in capsys.readouterr().err


def test_newest_release_picks_highest_version(tmp_path):
    for name in ("nexus-release-v2", "nexus-release-v10", "nexus-release-v9"):
        (tmp_path / name).mkdir()
    assert newest_release(tmp_path).name == "nexus-release-v10"
    with pytest.raises(NexusError):
        newest_release(tmp_path / "nexus-release-v2")


def test_mismatched_tokenizers_skip_fidelity(tmp_path, tiny_llama_dir):
    import tiny

    other_tok = tiny.build_tokenizer(tmp_path / "tok", vocab_size=300)
    student = tiny.save_model(
        tiny.build_model("llama", other_tok, num_layers=2), other_tok, tmp_path / "student"
    )
    cfg = BenchmarkConfig(
        student=str(student),
        teacher=str(tiny_llama_dir),
        tasks=["builtin-chat"],
        limit=2,
        precision="fp32",
        bootstrap_samples=50,
    )
    summary = run_benchmark(cfg, results_dir=tmp_path / "out")
    assert "tokenizers differ" in summary["fidelity"]["skipped"]
    assert "Fidelity: skipped" in summary["console"]


def test_hanging_code_is_a_failed_item_not_a_hung_run(tmp_path, tiny_llama_dir):
    # the completion continues a comment (cut at the newline), so the program always hangs
    rows = [
        {
            "prompt": "def f():\n    while True:\n        pass\n#",
            "test": "def check(c):\n    c()\n",
            "entry_point": "f",
        }
    ]
    (tmp_path / "hang.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "hang.yaml").write_text(
        "name: hang\nkind: code\nsource: hang.jsonl\nchat_template: false\nmax_new_tokens: 2\nstop: ['\\n']\n"
    )
    cfg = BenchmarkConfig(
        student=str(tiny_llama_dir),
        teacher=str(tiny_llama_dir),
        tasks=[str(tmp_path / "hang.yaml")],
        limit=1,
        precision="fp32",
        code_timeout_s=1.0,
        fidelity=False,
        bootstrap_samples=10,
    )
    run_benchmark(cfg, results_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "benchmark_results.json").read_text())
    item = results["tasks"][0]["items"][0]
    assert item["teacher"]["sandbox"] == "timeout" and item["teacher"]["correct"] is False
    shutil.rmtree(tmp_path / "out")


def test_lm_eval_bridge_without_the_extra_is_a_clear_error(monkeypatch):
    import sys

    from nexus.benchmark.lm_eval_bridge import run_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(NexusError, match="lm-evaluation-harness"):
        run_lm_eval(object(), ["piqa"], limit=2)


def test_stop_flag_stops_at_a_step_boundary(tmp_path, tiny_llama_dir):
    from nexus.monitor import Flags

    flags = Flags(tmp_path / "flags")
    flags.stop()
    cfg = BenchmarkConfig(
        student=str(tiny_llama_dir),
        teacher=str(tiny_llama_dir),
        tasks=["builtin-chat"],
        limit=2,
        precision="fp32",
        fidelity=False,
        bootstrap_samples=10,
    )
    with pytest.raises(NexusError, match="stopped"):
        run_benchmark(cfg, results_dir=tmp_path / "out", flags=flags)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["status"] == "Stopped" and status["step"] == 1


def test_task_accuracy_matches_the_head_to_head_run(run, tiny_qwen2_dir):
    from nexus.benchmark.runner import load_for_benchmark, task_accuracy
    from nexus.benchmark.tasks import load_task, resolve_task_specs

    summary, out = run
    results = json.loads((out / "benchmark_results.json").read_text())
    cfg = BenchmarkConfig(**{**results["config"], "student": str(tiny_qwen2_dir)})
    lm = load_for_benchmark("student", str(tiny_qwen2_dir), cfg)
    for name in ("builtin-chat", "builtin-math"):
        task = load_task(resolve_task_specs([name])[0], limit=cfg.limit, seed=cfg.seed)
        expected = next(
            t["summary"]["student_accuracy"] for t in results["tasks"] if t["summary"]["name"] == name
        )
        assert task_accuracy(lm, task, cfg) == pytest.approx(expected)
