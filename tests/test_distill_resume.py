"""SIGKILL at a random moment, resume, and end with weights bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nexus.data.builtin import arithmetic_word_problems, python_source_snippets


def _command(teacher: Path, data: Path, out: Path, tmp: Path) -> list[str]:
    return [
        sys.executable, "-m", "nexus", "distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
        "--results", str(tmp / f"results-{out.name}"), "--flags", str(tmp / "flags"), "--student-layers", "2",
        "--max-steps", "14", "--seq-len", "64", "--batch-size", "2", "--grad-accum", "2", "--precision", "fp32",
        "--device", "cpu", "--anchor-weight", "0.3", "--set", "save_every=1", "--set", "keep_last=2",
        "--set", "eval_every=5", "--set", "warmup_steps=3",
    ]  # fmt: skip


def _weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


def test_sigkill_then_resume_gives_bitwise_identical_weights(tiny_llama_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"text": e.text} for e in python_source_snippets(8)]
    rows += [{"question": e.prompt, "answer": e.response} for e in arithmetic_word_problems(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    reference = tmp_path / "reference"
    subprocess.run(
        _command(tiny_llama_dir, data, reference, tmp_path), env=env, check=True, capture_output=True
    )

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed = tmp_path / "killed"
    # stdin is no terminal: a SIGKILLed run reading keys would leave a developer's terminal in cbreak mode
    proc = subprocess.Popen(_command(tiny_llama_dir, data, killed, tmp_path), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Wait until training is under way (a checkpoint exists), then kill at a random moment.
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "checkpoints").glob("checkpoint-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists() or proc.returncode == 0, f"seed {seed}"
    resumed = subprocess.run(
        _command(tiny_llama_dir, data, killed, tmp_path), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["step"] == 14
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] < 14, (
        f"seed {seed}: killed too late"
    )

    ref, got = _weights(reference), _weights(killed)
    assert ref.keys() == got.keys()
    different = [k for k in ref if not (ref[k] == got[k]).all()]
    assert not different, (
        f"kill seed {seed}, resumed from {summary['resumed_from_step']}: {different[:3]} differ"
    )
    proj_ref = reference / "anchoring_projections.safetensors"
    assert not proj_ref.exists()  # same hidden size: no projections to carry


def test_checkpoint_rename_is_atomic_under_partial_writes(tmp_path):
    from nexus.trainer import checkpoint as ckpt

    ckpt.write_checkpoint(tmp_path, 1, lambda d: (d / "a").write_text("1"), meta={}, keep_last=2)

    def crash(d: Path):
        (d / "a").write_text("partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ckpt.write_checkpoint(tmp_path, 2, crash, meta={}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    # A temp dir left by a SIGKILL (no cleanup ran) is ignored and then removed.
    (tmp_path / "checkpoints" / ".tmp-checkpoint-3-x").mkdir()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    ckpt.clean_partial(tmp_path)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    for step in (2, 3, 4):
        ckpt.write_checkpoint(tmp_path, step, lambda d: (d / "a").write_text("x"), meta={}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
