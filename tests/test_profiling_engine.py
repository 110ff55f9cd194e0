"""The fast path (cached layer inputs) against naive full re-runs, and the perturbations."""

from __future__ import annotations

import pytest
import tiny
import torch

from nexus.data import Example
from nexus.profiling.engine import (
    LayerRunner,
    Perturbation,
    block_influence,
    make_batches,
    naive_sequence_logprobs,
    perturbed,
)
from nexus.profiling.probes import encode_probes


def _probe_set(tokenizer, name="mix"):
    examples = [
        Example("text", "t0", name, text="def add(a, b):\n    return a + b\n"),
        Example("text", "t1", name, text="The quick brown fox jumps over the lazy dog."),
        Example("chat", "c0", name, prompt="Ava has 3 apples and gets 2 more.", response="3 + 2 = 5\n#### 5"),
        Example(
            "choice",
            "m0",
            name,
            prompt="Keep soup warm",
            choices=["Put it on the stove.", "Put it in ice."],
            label=0,
        ),
    ]
    return encode_probes(name, examples, tokenizer, max_tokens=64)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("kind", ["removal", "noise", "attention", "mlp"])
def test_fast_path_equals_naive_rerun(tiny_tokenizer, family, kind):
    model = tiny.build_model(family, tiny_tokenizer, num_layers=4, seed=3)
    probes = _probe_set(tiny_tokenizer)
    batches = make_batches(
        probes.sequences, batch_tokens=64, pad_id=tiny_tokenizer.pad_token_id, device="cpu"
    )
    assert len(batches) > 1  # padding and several batches are exercised
    runner = LayerRunner(model)
    perturbation = Perturbation(kind, noise_scale=0.5, seed=7)
    for b, batch in enumerate(batches):
        clean = runner.clean_pass(batch)
        base_fast = runner.sequence_logprobs(clean.inputs[-1], batch)
        base_naive = naive_sequence_logprobs(model, batch)
        torch.testing.assert_close(base_fast[0], base_naive[0], rtol=1e-5, atol=1e-4)
        assert torch.equal(base_fast[1], base_naive[1])
        for layer in range(4):
            fast = runner.sequence_logprobs(runner.run_from(clean, layer, perturbation, batch_seed=b), batch)
            naive = naive_sequence_logprobs(model, batch, layer, perturbation, batch_seed=b)
            torch.testing.assert_close(fast[0], naive[0], rtol=1e-5, atol=1e-4)
            # the perturbation really changes the result
            assert not torch.allclose(fast[0], base_fast[0], atol=1e-4)


def test_removal_hook_makes_layer_identity(tiny_tokenizer):
    model = tiny.build_model("llama", tiny_tokenizer, num_layers=2)
    layer = model.model.layers[1]
    seen = {}

    def observe(module, args, kwargs, out):
        seen.update(i=args[0] if args else kwargs["hidden_states"], o=out)

    with perturbed(model.model.layers, 1, Perturbation("removal")):
        layer.register_forward_hook(observe, with_kwargs=True)  # runs after the removal hook
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert torch.equal(seen["i"], seen["o"])


def test_block_influence_of_identity_is_zero_and_of_opposite_is_two():
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    total, count = block_influence(x, x, mask)
    assert count == 8 and abs(total) < 1e-5
    total, count = block_influence(x, -x, mask)
    assert total / count == pytest.approx(2.0)


def test_batches_cover_every_sequence_once(tiny_tokenizer):
    probes = _probe_set(tiny_tokenizer)
    batches = make_batches(probes.sequences, batch_tokens=50, pad_id=0, device="cpu")
    indices = sorted(int(i) for b in batches for i in b.index)
    assert indices == list(range(len(probes.sequences)))
    for batch in batches:
        assert batch.input_ids.shape[0] * batch.input_ids.shape[1] <= max(50, batch.input_ids.shape[1])
        for row, i in enumerate(batch.index):
            seq = probes.sequences[int(i)]
            assert batch.input_ids[row, : len(seq.input_ids)].tolist() == seq.input_ids
            assert batch.score_mask[row].sum() == sum(seq.score_mask)
