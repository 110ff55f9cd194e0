"""Two CPU processes (torchrun, gloo, DDP) match one process with the same global batch.

Tolerance: per-step losses within 1e-5 relative and final weights within 1e-5 absolute (fp32;
only the order of the floating-point reduction differs: gradients are summed by all-reduce
instead of by accumulation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nexus.data.builtin import arithmetic_word_problems, python_source_snippets
from nexus.trainer import checkpoint as ckpt


def _args(teacher: Path, data: Path, out: Path, batch: int, accum: int) -> list[str]:
    return [
        "distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
        "--results", str(out.parent / "results"), "--flags", str(out.parent / "flags"), "--student-layers", "2",
        "--max-steps", "5", "--seq-len", "64", "--batch-size", str(batch), "--grad-accum", str(accum),
        "--precision", "fp32", "--device", "cpu", "--anchor-weight", "0.3", "--set", "save_every=5",
        "--set", "eval_every=0", "--set", "warmup_steps=1",
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow  # 30-90 s on the shared 2-core machine (three process start-ups)
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_llama_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"text": e.text} for e in python_source_snippets(8)]
    rows += [{"question": e.prompt, "answer": e.response} for e in arithmetic_word_problems(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    single = tmp_path / "one" / "distill"
    subprocess.run([sys.executable, "-m", "nexus", *_args(tiny_llama_dir, data, single, 2, 2)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    double = tmp_path / "two" / "distill"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nexus",
         *_args(tiny_llama_dir, data, double, 2, 1)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    one, two = _losses(single), _losses(double)
    assert len(one) == len(two) == 5  # rank 1 writes no metrics: no duplicated lines
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (one, two)
    w1 = load_file(str(single / "model" / "model.safetensors"))
    w2 = load_file(str(double / "model" / "model.safetensors"))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=0)
    # Only rank 0 wrote status and checkpoints.
    status = json.loads((tmp_path / "two" / "results" / "status.json").read_text())
    assert status["status"] == "Completed" and status["step"] == 5
    assert [p.name for p in (double / "checkpoints").iterdir()] == ["checkpoint-5"]
    meta = json.loads((double / "checkpoints" / "checkpoint-5" / "meta.json").read_text())
    assert meta["world_size"] == 2
    state = ckpt.load_trainer_state(double / "checkpoints" / "checkpoint-5")
    assert len(state["rng"]) == 2  # every rank's RNG states, gathered by rank 0


# ----------------------------------------------------------------------------------------
# FSDP (PyTorch FSDP2 on gloo): student sharded, teacher sharded or replicated
# ----------------------------------------------------------------------------------------
ACCELERATE_FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(str(out / "model" / "model.safetensors")),
        **{f"proj.{k}": v for k, v in load_file(str(out / "anchoring_projections.safetensors")).items()},
    }


def _meta(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"checkpoint-{step}" / "meta.json").read_text())


def _eval(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # eval_every=0: at the end (and at step 0, the starting point)
    (row,) = [r for r in rows if r["split"] == "eval" and r["step"] > 0]
    return row


@pytest.mark.slow  # 40-120 s on the shared 2-core machine (seven process start-ups)
def test_fsdp_matches_one_process_and_its_checkpoints_resume(tiny_llama_dir, tiny_tokenizer, tmp_path):
    """FSDP on 2 gloo processes = 1 process with the same global batch (student of another hidden
    size, so the anchoring projections are sharded too; fused LM-head loss on the gathered head):
    per-step losses within 1e-5 relative, final weights and projections within 1e-5 absolute,
    held-out metrics within 1e-5 relative. Then its step-2 checkpoint resumes under `accelerate
    launch` with an FSDP config (auto mode, teacher replicated) on the uninterrupted FSDP weights
    (1e-6), and under DDP (plain torchrun) within 1e-5."""
    import tiny

    student = tiny.save_model(
        tiny.build_model("llama", tiny_tokenizer, num_layers=2, hidden=32, intermediate=64, seed=3),
        tiny_tokenizer,
        tmp_path / "student",
    )
    data = tmp_path / "data.jsonl"
    rows = [{"text": e.text} for e in python_source_snippets(8)]
    rows += [{"question": e.prompt, "answer": e.response} for e in arithmetic_word_problems(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("ACCELERATE_USE_FSDP", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def run(name: str, launcher: list[str], accum: int, *extra: str, resume_from: Path | None = None) -> Path:
        out = tmp_path / name / "distill"
        if resume_from is not None:  # an output directory holding only that checkpoint
            shutil.copytree(resume_from, out / "checkpoints" / resume_from.name)
        args = [*_args(tiny_llama_dir, data, out, 2, accum), "--student", str(student), *extra]
        done = subprocess.run([*launcher, "-m", "nexus", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        if resume_from is not None:
            assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2
        return out

    single = run("one", [sys.executable], 2)
    fsdp = run("fsdp", torchrun, 1, "--distributed", "fsdp", "--set", "gradient_checkpointing=true",
               "--set", "save_every=1", "--set", "keep_last=5")  # fmt: skip

    one, two = _losses(single), _losses(fsdp)
    assert len(one) == len(two) == 5  # rank 1 writes no metrics
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (one, two)
    w1, w2 = _weights(single), _weights(fsdp)
    assert w1.keys() == w2.keys() and any(k.startswith("proj.") for k in w1)
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=0)
    e1, e2 = _eval(single), _eval(fsdp)
    for key in ("kd", "ce", "top1_agreement"):
        assert abs(e1[key] - e2[key]) <= 1e-5 * abs(e1[key]), (e1, e2)
    assert sorted(p.name for p in (fsdp / "checkpoints").iterdir()) == [
        f"checkpoint-{i}" for i in range(1, 6)
    ]
    assert (_meta(fsdp, 5)["world_size"], _meta(fsdp, 5)["parallelism"]) == (2, "fsdp")
    status = json.loads((tmp_path / "fsdp" / "results" / "status.json").read_text())
    assert status["status"] == "Completed" and status["step"] == 5

    # The FSDP checkpoint of step 2, resumed by accelerate launch with an FSDP config (no nexus flag).
    config = tmp_path / "fsdp.yaml"
    config.write_text(ACCELERATE_FSDP_CONFIG)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                  "--main_process_port", str(_free_port())]  # fmt: skip
    checkpoint = fsdp / "checkpoints" / "checkpoint-2"
    resumed = run("accelerate", accelerate, 1, "--teacher-sharding", "replicate", resume_from=checkpoint)
    assert _meta(resumed, 5)["parallelism"] == "fsdp"
    assert _losses(resumed) == pytest.approx(two[2:], rel=1e-6)
    w = _weights(resumed)
    for key in w2:
        torch.testing.assert_close(w[key], w2[key], atol=1e-6, rtol=0)

    # The same checkpoint under DDP: the format does not depend on the parallelism.
    crossed = run("ddp", torchrun, 1, resume_from=checkpoint)
    assert _meta(crossed, 5)["parallelism"] == "ddp"
    assert _losses(crossed) == pytest.approx(two[2:], rel=1e-5)
    w = _weights(crossed)
    for key in w1:
        torch.testing.assert_close(w[key], w1[key], atol=1e-5, rtol=0)
