"""The sensitivity profile of a loaded model over tokenized probe sets (no file I/O here).

For each capability: one clean pass per batch (baseline metric, Block Influence, cached layer
inputs), then one fast perturbed pass per layer (:class:`nexus.profiling.engine.LayerRunner`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nexus.profiling.engine import LayerRunner, Perturbation, block_influence, make_batches
from nexus.profiling.metrics import probe_metrics, relative_increase
from nexus.profiling.probes import ProbeSet


class ProfileStopped(Exception):
    """Raised by a layer callback (stop flag) to end profiling early."""


def _score(runner: LayerRunner, probe_set: ProbeSet, batches: list, hiddens: list[torch.Tensor]) -> dict:
    """Probe metrics of one capability from the last-layer outputs of each of its batches."""
    seqs = probe_set.sequences
    sums, counts = np.zeros(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
    for hidden, batch in zip(hiddens, batches, strict=True):
        s, c = runner.sequence_logprobs(hidden, batch)
        sums[batch.index.numpy()] = s.cpu().numpy()
        counts[batch.index.numpy()] = c.cpu().numpy()
    return probe_metrics(sums, counts, [s.example for s in seqs], [s.choice for s in seqs], probe_set.labels)


def profile_model(
    model: nn.Module,
    probe_sets: Sequence[ProbeSet],
    *,
    perturbation: Perturbation,
    layers: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    pad_id: int = 0,
    on_layer: Callable[[str, int], None] | None = None,
) -> dict:
    """Profile ``model``: per capability, baseline metrics, per-layer perturbed metrics and
    sensitivities, and Block Influence of every layer.

    Returns ``{"num_layers", "layers", "capabilities": {name: {...}}}``; ``on_layer(name,
    layer)`` is called after each perturbed layer (it may raise :class:`ProfileStopped`).
    """
    runner = LayerRunner(model)
    device = next(model.parameters()).device
    layers = list(range(runner.num_layers)) if layers is None else list(layers)
    out: dict = {"num_layers": runner.num_layers, "layers": layers, "capabilities": {}}
    for probe_set in probe_sets:
        n_seq = len(probe_set.sequences)
        batches = make_batches(probe_set.sequences, batch_tokens=batch_tokens, pad_id=pad_id, device=device)
        clean = [runner.clean_pass(b) for b in batches]

        baseline = _score(runner, probe_set, batches, [c.inputs[-1] for c in clean])
        influence = []
        for i in range(runner.num_layers):
            total, count = 0.0, 0
            for c, batch in zip(clean, batches, strict=True):
                s, n = block_influence(c.inputs[i], c.inputs[i + 1], batch.attention_mask)
                total, count = total + s, count + n
            influence.append(total / count)

        nlls, accs = [], []
        for layer in layers:
            hiddens = [runner.run_from(c, layer, perturbation, batch_seed=b) for b, c in enumerate(clean)]
            m = _score(runner, probe_set, batches, hiddens)
            nlls.append(m["nll"])
            accs.append(m["accuracy"])
            if on_layer is not None:
                on_layer(probe_set.name, layer)
        is_mc = baseline["accuracy"] is not None
        out["capabilities"][probe_set.name] = {
            "baseline": baseline,
            "nll": nlls,
            "sensitivity": [relative_increase(baseline["nll"], v) for v in nlls],
            "accuracy": accs if is_mc else None,
            "accuracy_drop": [baseline["accuracy"] - a for a in accs] if is_mc else None,
            "block_influence": influence,
            "num_probes": len(probe_set.examples),
            "num_sequences": n_seq,
            "num_scored_tokens": probe_set.num_scored_tokens,
            "truncated": probe_set.truncated,
            "sha256": probe_set.sha256(),
            "sources": probe_set.sources,
        }
        del clean
    return out


def evaluate_model(
    model: nn.Module, probe_sets: Sequence[ProbeSet], *, batch_tokens: int = 4096, pad_id: int = 0
) -> dict:
    """Unperturbed metrics (mean NLL, accuracy for multiple choice) of each probe set."""
    runner = LayerRunner(model)
    device = next(model.parameters()).device
    out = {}
    for probe_set in probe_sets:
        batches = make_batches(probe_set.sequences, batch_tokens=batch_tokens, pad_id=pad_id, device=device)
        hiddens = [runner.clean_pass(b).inputs[-1] for b in batches]
        out[probe_set.name] = _score(runner, probe_set, batches, hiddens)
    return out
