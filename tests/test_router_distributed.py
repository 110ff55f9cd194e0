"""Router losses under DDP: 2 gloo processes (torchrun) = 1 process with the same global batch.

One process with ``grad_accum=2`` sees the same two micro-batches (rows ``rows[0:2]``,
``rows[2:4]``) as two processes with ``grad_accum=1`` (rank r: ``rows[2r:2r+2]``), so the
per-micro-batch router losses (load balancing, z-loss, beta_entropy: nonlinear in the batch) are
the same numbers. Their mean, the logged ``router_*`` metrics and the gradients must then agree;
tolerance: fp32 reduction order only (1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROUTER_KEYS = ("loss", "extra", "router_lb", "router_z", "router_balance", "router_entropy")


def _args(teacher: Path, out: Path, accum: int) -> list[str]:
    return [
        "router", "--teacher", str(teacher), "--student", str(teacher), "--data", "builtin:code=12,math=30,chat=0",
        "--out", str(out), "--results", str(out.parent / "results"), "--flags", str(out.parent / "flags"),
        "--max-steps", "3", "--seq-len", "64", "--batch-size", "2", "--grad-accum", str(accum),
        "--precision", "fp32", "--device", "cpu", "--mode", "copy", "--router-init", "random",
        "--set", "lb_weight=0.5", "--set", "beta_entropy=1.0", "--set", "z_weight=0.1", "--set", "lr=0.01",
        "--set", "save_every=3", "--set", "eval_every=0", "--set", "warmup_steps=0", "--set", "eval_max_rows=4",
    ]  # fmt: skip


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


# Runs in `make test` (about 20 s on an idle 2-core machine): the issue-14 check of router losses under DDP.
def test_router_losses_do_not_scale_with_the_number_of_processes(tiny_llama_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = tmp_path / "one" / "router"
    run = subprocess.run([sys.executable, "-m", "nexus", *_args(tiny_llama_dir, single, 2)], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    double = tmp_path / "two" / "router"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nexus",
         *_args(tiny_llama_dir, double, 1)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    one, two = _train_rows(single), _train_rows(double)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        for key in ROUTER_KEYS:
            assert key in a, (key, sorted(a))
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (key, a, b)
    assert one[0]["router_lb"] > 0 and one[0]["extra"] > 0  # the router terms are really in the loss
    w1 = load_file(str(single / "model" / "model.safetensors"))
    w2 = load_file(str(double / "model" / "model.safetensors"))
    gates = [k for k in w1 if k.endswith("gate.weight")]
    assert gates  # the routers moved, and moved the same way
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=0)
