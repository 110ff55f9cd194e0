"""The multimodal pipeline on a tiny random LLaVA: the text engine trains a VLM student
(pixel_values reach student and teacher, anchoring on the language tower), a pruned VLM saves
and reloads with plain transformers, the profiler runs on image probes, and every phase runs
through the CLI into a release that AutoModelForImageTextToText loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_vlm
import torch

from nexus.models import build_student, decoder_layers
from nexus.multimodal.rows import encode_rows
from nexus.multimodal.synthetic import synthetic_examples
from nexus.trainer.teacher import base_model, model_inputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_vlm_pair(tiny_tokenizer):
    return tiny_vlm.build_vlm(tiny_tokenizer)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tiny_vlm_pair, tmp_path_factory) -> Path:
    model, processor = tiny_vlm_pair
    return tiny_vlm.save_vlm(model, processor, tmp_path_factory.mktemp("tiny-vlm"))


def test_vision_rows_feed_the_language_tower_the_pictures(tiny_vlm_pair):
    model, processor = tiny_vlm_pair
    rows = encode_rows(processor, synthetic_examples("train", 4, size=16))
    batch = rows.batch([0, 1])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert rows.scored_tokens([0, 1]) == int(batch["loss_mask"].sum()) > 0
    hidden = base_model(model)(**model_inputs(batch), use_cache=False).last_hidden_state
    other = dict(batch, pixel_values=batch["pixel_values"].flip(0))  # the pictures swapped
    swapped = base_model(model)(**model_inputs(other), use_cache=False).last_hidden_state
    assert not torch.allclose(hidden[batch["loss_mask"]], swapped[batch["loss_mask"]])
    # no position_ids: a row is one example (Qwen2-VL computes its 3-D positions itself)
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask", "pixel_values"}


def test_pruned_vlm_reloads_with_plain_transformers(tiny_vlm_pair, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = tiny_vlm_pair
    student = build_student(model, [0, 3])
    assert len(decoder_layers(student)) == 2 and student.config.text_config.num_hidden_layers == 2
    assert torch.equal(
        student.model.language_model.layers[1].mlp.up_proj.weight,
        model.model.language_model.layers[3].mlp.up_proj.weight,
    )
    assert torch.equal(
        student.model.vision_tower.embeddings.patch_embedding.weight,
        model.model.vision_tower.embeddings.patch_embedding.weight,
    )
    tiny_vlm.save_vlm(student, processor, tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    AutoProcessor.from_pretrained(tmp_path)
    batch = encode_rows(processor, synthetic_examples("dev", 2, size=16)).batch([0, 1])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, student(**inputs).logits, atol=1e-5)


def _config(tmp: Path, teacher: Path, **distill) -> Path:
    sections = {
        "profile": {"image_size": 16, "num_probes": 2, "eval_rows": 5, "plan": {"keep_layers": 2}},
        "distill": {"image_size": 16, "train_rows": 8, "heldout_rows": 4, "max_steps": 4, "micro_batch_size": 2,
                    "warmup_steps": 1, "save_every": 2, "eval_rows": 5, **distill},
        "train": {"image_size": 16, "train_rows": 8, "heldout_rows": 4, "max_steps": 2, "micro_batch_size": 2,
                  "warmup_steps": 1, "save_every": 2, "eval_rows": 5},
        "router": {"image_size": 16, "train_rows": 8, "heldout_rows": 4, "max_steps": 2, "micro_batch_size": 2,
                   "warmup_steps": 1, "save_every": 2, "eval_rows": 5, "num_experts": 5, "calibration_tokens": 256},
        "release": {"image_size": 16, "eval_rows": 5},
    }  # fmt: skip
    return tiny_vlm.write_config(tmp, teacher, sections)


_nexus = tiny_vlm.nexus


def test_every_phase_through_the_cli_into_a_loadable_release(tiny_vlm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = _config(tmp_path, tiny_vlm_dir)
    result = _nexus("multimodal", "run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    for number, phase in enumerate(("Profile", "Distill", "Train", "Router", "Release"), start=1):
        assert f"[Phase {number}: {phase}] done" in result.stderr
    results = tmp_path / "results"
    plan = json.loads((results / "mm_profile" / "student_plan.json").read_text())
    assert len(plan["keep_layers"]) == 2
    profile = json.loads((results / "mm_profile" / "teacher.json").read_text())
    assert set(profile["capabilities"]) == {"colour", "shape", "position", "count", "text"}
    distill = json.loads((results / "mm_distill" / "summary.json").read_text())
    assert distill["keep_layers"] == plan["keep_layers"] and distill["anchor_pairs"]
    assert distill["trainable_parameters"] < distill["student_parameters"]  # vision side frozen
    release = tmp_path / "release"
    manifest = json.loads((release / "nexus_manifest.json").read_text())
    assert manifest["student_layers"] == 2 and manifest["teacher_layers"] == 4
    # phase 4: the language tower of phase 3's student as 5 experts, one per capability
    from nexus.trainer.evaluate import heldout_kd

    router = json.loads((results / "mm_router" / "summary.json").read_text())
    assert router["domains"] == ["colour", "count", "position", "shape", "text"]
    assert router["expert_names"] == router["domains"] and router["step"] == 2
    assert heldout_kd(router["init_eval"]) == pytest.approx(heldout_kd(router["dense_eval"]), abs=1e-4)
    assert (results / "mm_router" / "routing.md").is_file()
    routed = AutoModelForImageTextToText.from_pretrained(results / "mm_router" / "model")
    assert routed.config.text_config.model_type == "mixtral" and len(routed.model.language_model.layers) == 2
    # the release says which student shipped and why, in numbers
    choice = manifest["student_choice"]
    assert re.fullmatch(
        r"(routed|dense): held-out accuracy \(5 questions\): routed .+ exact, .+ MC vs dense .+", choice
    )
    shipped = "mixtral" if choice.startswith("routed") else "llama"
    assert json.loads((release / "config.json").read_text())["text_config"]["model_type"] == shipped
    assert {r["capability"] for r in manifest["retention"]} == {
        "colour",
        "shape",
        "position",
        "count",
        "text",
    }
    assert "sensitivity_heatmap.png" in (release / "README.md").read_text()
    report = (results / "multimodal_comparison.md").read_text()
    assert "synthetic/heldout/0.png" in report
    model = AutoModelForImageTextToText.from_pretrained(release)
    AutoProcessor.from_pretrained(release)
    assert len(model.model.language_model.layers) == 2
    status = json.loads((results / "status.json").read_text())
    assert status["status"] == "Completed" and status["phase"] == 5
    again = _nexus("multimodal", "run", "--config", str(config))  # resume mode: all skipped
    assert again.returncode == 0 and again.stderr.count("complete, skipped (resume mode)") == 5


def test_text_teacher_and_bad_data_are_one_line_errors(tiny_llama_dir, tiny_vlm_dir, tmp_path):
    config = _config(tmp_path, tiny_llama_dir)
    result = _nexus("multimodal", "run", "--config", str(config), "--only", "profile")
    assert result.returncode == 2
    assert "not an image-text-to-text model" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "data.jsonl").write_text('{"image": "missing.png", "prompt": "p", "response": "r"}\n')
    config = _config(tmp_path, tiny_vlm_dir)
    result = _nexus(
        "multimodal", "run", "--config", str(config), "--only", "profile", "--set", f"profile.data={tmp_path}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no usable image-text rows (1 skipped" in result.stderr


def test_sigkill_in_distill_then_resume_gives_the_same_student(tiny_vlm_dir, tmp_path):
    import signal
    import time

    from safetensors.torch import load_file

    runs = {}
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
        runs[name] = _config(tmp_path / name, tiny_vlm_dir, max_steps=6, save_every=1)
    command = [sys.executable, "-m", "nexus", "multimodal", "run", "--only", "distill", "--set"]
    plan = ["profile.num_probes=1"]  # phase 2 reads phase 1's plan: run both, kill in 2
    for name in runs:
        first = _nexus("multimodal", "run", "--config", str(runs[name]), "--only", "profile", "--set", *plan)
        assert first.returncode == 0, first.stderr[-2000:]
    reference = subprocess.run(
        [*command, *plan, "--config", str(runs["reference"])], cwd=REPO, capture_output=True
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    results = tmp_path / "killed" / "results"
    proc = subprocess.Popen(
        [*command, *plan, "--config", str(runs["killed"])],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = json.loads((results / "status.json").read_text())
            except (OSError, json.JSONDecodeError):
                status = {}
            if status.get("phase") == 2 and (status.get("step") or 0) >= 2:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "distill ended before the kill"
    done = subprocess.run(
        [*command, *plan, "--config", str(runs["killed"])], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((results / "mm_distill" / "summary.json").read_text())
    assert summary["step"] == 6 and 1 <= summary["resumed_from_step"] < 6
    ref = load_file(str(tmp_path / "reference" / "results" / "mm_distill" / "model" / "model.safetensors"))
    got = load_file(str(results / "mm_distill" / "model" / "model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
