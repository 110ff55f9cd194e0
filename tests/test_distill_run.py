"""`nexus distill` end to end on tiny models: artifacts, monitor, cache, errors, resume checks."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from nexus.cli import main
from nexus.config import load_config
from nexus.data.builtin import arithmetic_word_problems, python_source_snippets
from nexus.distillation.config import DistillConfig
from nexus.distillation.run import run_distill
from nexus.distillation.student import evenly_spread_layers
from nexus.errors import NexusError
from nexus.monitor import Flags


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distill-data") / "mix.jsonl"
    rows = [{"text": e.text} for e in python_source_snippets(12)]
    rows += [{"question": e.prompt, "answer": e.response} for e in arithmetic_word_problems(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(teacher: Path, data: Path, out: Path, **kw) -> DistillConfig:
    base = {
        "teacher": str(teacher),
        "data": [str(data)],
        "student_layers": 2,
        "seq_len": 64,
        "micro_batch_size": 2,
        "max_steps": 4,
        "warmup_steps": 1,
        "save_every": 2,
        "eval_every": 2,
        "precision": "fp32",
        "device": "cpu",
        "out": str(out),
    }
    base.update(kw)
    return DistillConfig(**base)


def test_evenly_spread_layers_keeps_first_and_last():
    assert evenly_spread_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spread_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(NexusError):
        evenly_spread_layers(4, 5)


def test_cli_distill_writes_model_checkpoints_metrics_and_status(tiny_llama_dir, data_file, tmp_path, capsys):
    out = tmp_path / "distill"
    code = main(
        [
            "distill",
            "--teacher",
            str(tiny_llama_dir),
            "--data",
            str(data_file),
            "--out",
            str(out),
            "--results",
            str(tmp_path / "results"),
            "--flags",
            str(tmp_path / "flags"),
            "--max-steps",
            "4",
            "--seq-len",
            "64",
            "--batch-size",
            "2",
            "--student-layers",
            "2",
            "--anchor-weight",
            "0.5",
            "--precision",
            "fp32",
            "--set",
            "save_every=2",
            "--set",
            "eval_every=2",
            "--set",
            "keep_last=1",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "Completed" and summary["step"] == 4
    assert summary["keep_layers"] == [0, 3]
    assert 0 < summary["eval"]["kd"] < 20 and 0 <= summary["eval"]["top1_agreement"] <= 1
    # The final student is a plain HF checkpoint folder; projections (same hidden size: none) apart.
    from nexus.models import load_model, resolve_model

    assert resolve_model(str(out)).kind == "checkpoint"
    model, _ = load_model(str(out / "model"))
    assert model.config.num_hidden_layers == 2
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["checkpoint-4"]  # keep_last=1
    ckpt = out / "checkpoints" / "checkpoint-4"
    assert {"model", "trainer_state.pt", "config.yaml", "meta.json"} <= {p.name for p in ckpt.iterdir()}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(x["loss"])) and x["loss"] > 0 for x in train)
    assert any(x["split"] == "eval" for x in lines)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    status = json.loads((tmp_path / "results" / "status.json").read_text())
    assert status["phase"] == 2 and status["status"] == "Completed" and status["step"] == 4
    assert status["throughput_unit"] == "tok/s"


def test_resume_refuses_other_config_and_continues_same(tiny_llama_dir, data_file, tmp_path):
    out = tmp_path / "d"
    first = run_distill(
        _cfg(tiny_llama_dir, data_file, out), results_dir=tmp_path / "r", flags=Flags(tmp_path / "f")
    )
    assert first["step"] == 4
    with pytest.raises(NexusError, match=r"another run .*lr"):
        run_distill(_cfg(tiny_llama_dir, data_file, out, lr=1e-3), results_dir=tmp_path / "r")
    again = run_distill(_cfg(tiny_llama_dir, data_file, out, save_every=1), results_dir=tmp_path / "r")
    assert again["resumed_from_step"] == 4 and again["step"] == 4


def test_stop_flag_checkpoints_and_stops(tiny_llama_dir, data_file, tmp_path):
    flags = Flags(tmp_path / "flags")
    flags.stop()
    out = tmp_path / "d"
    summary = run_distill(
        _cfg(tiny_llama_dir, data_file, out, max_steps=50), results_dir=tmp_path / "r", flags=flags
    )
    assert summary["status"] == "Stopped" and summary["step"] == 1
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "Stopped"


def test_cached_teacher_trains_and_refuses_a_cache_for_other_data(tiny_llama_dir, data_file, tmp_path):
    cache_root = tmp_path / "tcache"
    cfg = _cfg(
        tiny_llama_dir,
        data_file,
        tmp_path / "d",
        cache_teacher=True,
        topk=8,
        teacher_cache_dir=str(cache_root),
        anchor_weight=0.5,
    )
    summary = run_distill(cfg, results_dir=tmp_path / "r")
    assert summary["status"] == "Completed" and summary["eval"]["kd_topk"] >= 0
    (built,) = [p for p in cache_root.iterdir() if (p / "meta.json").is_file()]
    meta = json.loads((built / "meta.json").read_text())
    assert meta["k"] == 8 and meta["layers"] == [0, 3]
    import numpy as np

    assert np.load(built / "train_topk_idx.npy", mmap_mode="r").dtype == np.uint16
    assert np.load(built / "train_topk_logp.npy", mmap_mode="r").dtype == np.float16
    other = data_file.parent / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"row {i} " * 20}) + "\n" for i in range(30)))
    bad = _cfg(
        tiny_llama_dir, other, tmp_path / "d2", cache_teacher=True, topk=8, teacher_cache_dir=str(built)
    )
    with pytest.raises(NexusError, match="teacher cache .* was built for data"):
        run_distill(bad, results_dir=tmp_path / "r")


def test_teacher_cache_build_resumes_after_interruption(tiny_llama_dir, data_file, tmp_path, monkeypatch):
    from nexus.trainer import cache as cache_mod

    cfg = _cfg(
        tiny_llama_dir,
        data_file,
        tmp_path / "d",
        cache_teacher=True,
        topk=4,
        teacher_cache_dir=str(tmp_path / "c"),
    )
    calls = {"n": 0}
    real = cache_mod.atomic_write_json

    def flaky(path, obj, **kw):
        if Path(path).name == "progress.json":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # killed mid-build
        return real(path, obj, **kw)

    monkeypatch.setattr(cache_mod, "atomic_write_json", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, results_dir=tmp_path / "r", cache_only=True)
    (partial,) = list((tmp_path / "c").iterdir())
    assert not (partial / "meta.json").exists()
    assert json.loads((partial / "progress.json").read_text())["train"] > 0
    monkeypatch.setattr(cache_mod, "atomic_write_json", real)
    run_distill(cfg, results_dir=tmp_path / "r", cache_only=True)
    resumed = np.load(partial / "train_topk_logp.npy")
    # A fresh build gives the same arrays.
    cfg2 = _cfg(
        tiny_llama_dir,
        data_file,
        tmp_path / "d",
        cache_teacher=True,
        topk=4,
        teacher_cache_dir=str(tmp_path / "c2"),
    )
    run_distill(cfg2, results_dir=tmp_path / "r", cache_only=True)
    (fresh,) = list((tmp_path / "c2").iterdir())
    assert np.array_equal(resumed, np.load(fresh / "train_topk_logp.npy"))


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(
    tiny_llama_dir, data_file, tmp_path, monkeypatch
):
    from nexus import utils

    real_fsync = utils.fsync_tree
    calls = {"n": 0}

    def full_on_second_checkpoint(root):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(root)

    monkeypatch.setattr(utils, "fsync_tree", full_on_second_checkpoint)
    out = tmp_path / "d"
    cfg = _cfg(tiny_llama_dir, data_file, out, max_steps=4, save_every=2)
    with pytest.raises(NexusError, match="disk full; the previous checkpoint .*checkpoint-2 is intact"):
        run_distill(cfg, results_dir=tmp_path / "r")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # no partial temp dir
    monkeypatch.setattr(utils, "fsync_tree", real_fsync)
    summary = run_distill(cfg, results_dir=tmp_path / "r")
    assert summary["resumed_from_step"] == 2 and summary["status"] == "Completed"


def test_disk_full_while_saving_the_final_model_keeps_the_checkpoint(
    tiny_llama_dir, data_file, tmp_path, monkeypatch
):
    from safetensors import SafetensorError

    from nexus.trainer import loop as loop_mod

    real = loop_mod.Trainer._save_student

    def full(self, directory, state, dtype=None):
        if directory.name.startswith(".tmp-model-"):  # safetensors reports ENOSPC its own way
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(self, directory, state, dtype)

    monkeypatch.setattr(loop_mod.Trainer, "_save_student", full)
    out = tmp_path / "d"
    cfg = _cfg(tiny_llama_dir, data_file, out, max_steps=2, save_every=2)
    with pytest.raises(
        NexusError, match=r"final model .*: disk full; the newest checkpoint .*checkpoint-2 is intact"
    ):
        run_distill(cfg, results_dir=tmp_path / "r")
    assert not list(out.glob(".tmp-model-*")) and not (out / "model").exists()
    monkeypatch.setattr(loop_mod.Trainer, "_save_student", real)
    summary = run_distill(cfg, results_dir=tmp_path / "r")
    assert summary["status"] == "Completed" and (out / "model" / "config.json").is_file()


def test_nan_loss_steps_are_skipped_then_stop_with_clear_error(
    tiny_llama_dir, data_file, tmp_path, monkeypatch
):
    from nexus.trainer import step as loop_mod

    real = loop_mod.fused_lm_head_loss

    def nan_loss(*args, **kw):
        total, kd, ce = real(*args, **kw)
        return total * float("nan"), kd, ce

    monkeypatch.setattr(loop_mod, "fused_lm_head_loss", nan_loss)
    out = tmp_path / "d"
    with pytest.raises(NexusError, match="3 steps had a non-finite loss"):
        run_distill(
            _cfg(tiny_llama_dir, data_file, out, max_steps=10, max_nan_steps=2), results_dir=tmp_path / "r"
        )
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "Failed"


def test_student_with_another_vocabulary_is_refused(tiny_llama_dir, data_file, tmp_path, tiny_tokenizer):
    tok_dir = tmp_path / "tok"
    other_tok = tiny.build_tokenizer(tok_dir, vocab_size=300)
    student = tiny.save_model(
        tiny.build_model("llama", other_tok, num_layers=2), other_tok, tmp_path / "other"
    )
    cfg = _cfg(tiny_llama_dir, data_file, tmp_path / "d", student=str(student))
    with pytest.raises(NexusError, match=r"tokenizers differ .*use --cross-tokenizer uld\|align"):
        run_distill(cfg, results_dir=tmp_path / "r")


def test_plan_gives_keep_layers_and_anchor_pairs(tiny_llama_dir, data_file, tmp_path):
    plan = tmp_path / "student_plan.json"
    plan.write_text(
        json.dumps(
            {"keep_layers": [0, 2, 3], "layer_map": {}, "anchor_pairs": [[1, 2]], "critical_layers": [2]}
        )
    )
    cfg = _cfg(tiny_llama_dir, data_file, tmp_path / "d", plan=str(plan), anchor_weight=1.0, max_steps=2)
    summary = run_distill(cfg, results_dir=tmp_path / "r")
    assert summary["keep_layers"] == [0, 2, 3] and summary["anchor_pairs"] == [(1, 2)]
    assert summary["eval"] is not None


def test_bad_inputs_are_one_line_errors(tiny_llama_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"instruction": "x"}) + "\n")
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    for data, pattern in (
        (empty, "no examples"),
        (missing, "missing.jsonl:1: .*missing field 'output'"),
        (piqa, "evaluation-only"),
    ):
        code = main(
            [
                "distill",
                "--teacher",
                str(tiny_llama_dir),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--results",
                str(tmp_path / "r"),
                "--max-steps",
                "1",
                "--student-layers",
                "2",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        import re

        assert re.search(pattern, err), err
        assert "Traceback" not in err


def test_yaml_section_loads_into_config(tmp_path):
    path = tmp_path / "nexus.yaml"
    path.write_text("distill:\n  student_layers: 10\n  kd_kind: jsd\n  jsd_beta: 0.5\n  max_steps: 30\n")
    cfg = load_config(DistillConfig, path, section="distill", overrides={"lr": 1e-4})
    assert (cfg.student_layers, cfg.kd_kind, cfg.max_steps, cfg.lr) == (10, "jsd", 30, 1e-4)
    path.write_text("distill:\n  kd_kind: jensen\n")
    with pytest.raises(NexusError, match="kd_kind"):
        load_config(DistillConfig, path, section="distill")
