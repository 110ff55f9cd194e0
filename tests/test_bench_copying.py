"""benchmarks/bench_copying.py: the repeat score against a naive per-token count, and the whole
script (models, a keep-list, the layer scan) on a tiny random model."""

from __future__ import annotations

import sys

import pytest
import torch
from bench_import import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_copying")


class Echo(torch.nn.Module):
    """Predicts, at every position, the token that followed the previous occurrence of the
    current token (a perfect induction head), else token 0."""

    def forward(self, ids):
        batch, length = ids.shape
        logits = torch.zeros(batch, length, 50)
        for b in range(batch):
            for t in range(length):
                earlier = [s for s in range(t) if ids[b, s] == ids[b, t]]
                logits[b, t, ids[b, earlier[-1] + 1] if earlier else 0] = 1.0
        return type("Out", (), {"logits": logits})()


def test_repeat_accuracy_counts_the_repeat_only(bench):
    batch = bench.repeat_batch(bos=1, vocab_size=50)
    assert batch.shape == (bench.RUNS, 1 + 2 * bench.RUN_LENGTH)
    assert torch.equal(batch[:, 1 : 1 + bench.RUN_LENGTH], batch[:, 1 + bench.RUN_LENGTH :])
    perfect = bench.repeat_accuracy(Echo(), batch)
    # a run may repeat a token inside itself (50 ids), which misleads even a perfect copier
    naive = sum(
        int(Echo()(batch[b : b + 1]).logits[0, t].argmax() == batch[b, t + 1])
        for b in range(bench.RUNS)
        for t in range(1 + bench.RUN_LENGTH, batch.shape[1] - 1)
    ) / (bench.RUNS * (bench.RUN_LENGTH - 1))
    assert perfect == pytest.approx(naive) and perfect > 0.5


def test_script_prints_models_keep_lists_and_the_layer_scan(bench, tiny_llama_dir, monkeypatch, capsys):
    argv = ["bench_copying.py", "--model", str(tiny_llama_dir), "--keep", "[0, 3]", "--scan-layers"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tiny_llama_dir}")]
    assert len(rows) == 1 + 1 + 4  # the model, one keep-list, four layers removed in turn
    assert "keeping [0, 3]" in rows[1] and "without layer 3" in rows[-1]
