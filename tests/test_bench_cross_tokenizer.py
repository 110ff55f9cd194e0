"""benchmarks/bench_cross_tokenizer.py end to end on two tiny random models whose tokenizers differ
(tests/assets/cross_tokenizer): every method trains through `nexus distill`, every model is scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tiny
from bench_import import load_benchmark

ASSETS = Path(__file__).parent / "assets" / "cross_tokenizer"


def _bench():
    return load_benchmark("bench_cross_tokenizer")


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 2-layer teacher (byte-level BPE, 400 tokens) and a 3-layer student base (Metaspace, 300)."""
    from transformers import AutoTokenizer

    s_tok = AutoTokenizer.from_pretrained(ASSETS / "student")
    t_tok = AutoTokenizer.from_pretrained(ASSETS / "teacher")
    root = tmp_path_factory.mktemp("bench-xtok")
    # untied: a tied random model repeats the last token it read, so its answers would be blank lines
    teacher = tiny.build_model("llama", t_tok, num_layers=2, seed=3, tie=False)
    teacher = tiny.save_model(teacher, t_tok, root / "teacher")
    base = tiny.save_model(tiny.build_model("llama", s_tok, num_layers=3, seed=4), s_tok, root / "base")
    return teacher, base


def test_prompts_come_from_disjoint_splits_of_every_set(bench):
    from nexus.data.splits import split_of

    train = bench.shared_prompts("train", 9, 0, None)
    held = bench.shared_prompts("eval", 9, 0, None)
    assert [split_of(ex) for ex in train] == ["train"] * 9 and [split_of(ex) for ex in held] == ["eval"] * 9
    assert {ex.format for ex in train} == {ex.format for ex in held} == {"self_instruct", "alpaca", "gsm8k"}
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in held}
    assert [ex.prompt for ex in bench.shared_prompts("train", 9, 0, None)] == [ex.prompt for ex in train]


def test_benchmark_runs_every_method_at_equal_tokens(bench, pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    teacher, base = pair
    out = tmp_path / "out"
    argv = ["--teacher", str(teacher), "--student-base", str(base), "--steps", "2", "--batch", "2",
            "--seq-len", "48", "--train-prompts", "6", "--heldout-prompts", "3", "--piqa-limit", "5",
            "--precision", "fp32", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    table = report["table"]
    assert list(table) == ["teacher", "before", "seqkd", "uld", "align"]
    for name, row in table.items():
        assert math.isfinite(row["bpb"]) and row["bpb"] > 0, name
        assert 0 <= row["piqa"] <= 1 and row["piqa_ci95"][0] <= row["piqa"] <= row["piqa_ci95"][1], name
        assert row["bpb_ci95"][0] <= row["bpb"] <= row["bpb_ci95"][1], name
        assert len(report["per_row"][name]["piqa"]) == 5 and len(report["per_row"][name]["bpb"]) == 3
    for method in ("seqkd", "uld", "align"):
        row = table[method]
        assert row["train_tokens"] == 2 * 2 * 48 and row["wall_s"] > 0 and row["peak_rss_gib"] > 0.05
        assert math.isfinite(row["loss"])
        assert (row["p_bpb_vs_seqkd"] is None) == (method == "seqkd")
    # the same packed rows: the first method builds them from the teacher's answers, the others reuse them
    assert "seq-kd: the teacher answers 6 prompts" in (out / "seqkd" / "distill.log").read_text()
    corpus = next((out / "data_cache").glob("*/*/meta.json")).parent
    for method in ("uld", "align"):
        assert f"tokenized data: reusing {corpus}" in (out / method / "distill.log").read_text()
    assert 0 <= table["uld"]["p_piqa_vs_seqkd"] <= 1 and 0 <= table["align"]["p_bpb_vs_seqkd"] <= 1
    # the trained students moved away from the untrained one, each its own way
    bpbs = [report["per_row"][m]["bpb"] for m in ("before", "seqkd", "uld", "align")]
    assert len({tuple(b) for b in bpbs}) == 4
    # the methods read the answers the benchmark wrote: one cache file for training, one held out
    assert len(list((tmp_path / "cache" / "teacher_answers").glob("*.json"))) == 2
    assert report["data"]["train_rows"] >= 1 and "| align | 192 |" in printed
    assert (out / "results.md").read_text() in printed

    # a rerun with the same settings reuses every stage
    assert bench.main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 5
    assert json.loads((out / "results.json").read_text())["table"]["align"]["bpb"] == table["align"]["bpb"]


def test_bad_arguments_are_one_line_errors(bench, capsys):
    cases = {
        "--methods uld,bogus": "--methods: unknown bogus; choose from seqkd, uld, align",
        "--steps 0": "--steps must be at least 1, got 0",
    }
    for flags, message in cases.items():
        with pytest.raises(SystemExit) as exc:
            bench.main(["--out", "x", *flags.split()])
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_a_model_that_cannot_be_read_is_a_one_line_error(bench, tmp_path, capsys):
    argv = ["--teacher", str(tmp_path / "missing"), "--student", str(tmp_path / "missing"), "--smoke",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_cross_tokenizer: error: "), err
