"""The fast experts path of routed students (nexus.models.moe_inference): the same outputs and
gradients as transformers' own implementations, chosen by load_model, never written to disk."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nexus.models import load_model
from nexus.models.moe_inference import IMPLEMENTATION, use_fast_experts


def _tiny_moe(family: str, top_k: int, seed: int = 0):
    extra = (
        {"num_local_experts": 3}
        if family == "mixtral"
        else {"num_experts": 3, "moe_intermediate_size": 48, "shared_expert_intermediate_size": 48}
    )
    config = AutoConfig.for_model(
        family,
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_experts_per_tok=top_k,
        **extra,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_fast_experts_match_transformers_eager(family, top_k):
    model = _tiny_moe(family, top_k)
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    model.set_experts_implementation("eager")
    with torch.no_grad():
        ref = model(ids).logits
        ref_step = model(ids[:1, :1]).logits  # one token: the decoding fast path
    assert use_fast_experts(model) and model.config._experts_implementation == IMPLEMENTATION
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(ids[:1, :1]).logits, ref_step, atol=1e-5, rtol=1e-4)


def test_fast_experts_gradients_match_eager():
    grads = {}
    for impl in ("eager", IMPLEMENTATION):
        model = _tiny_moe("mixtral", 2).train()
        if impl == IMPLEMENTATION:
            assert use_fast_experts(model)
        else:
            model.set_experts_implementation(impl)
        ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
        model(ids, labels=ids).loss.backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["eager"].keys() == grads[IMPLEMENTATION].keys()
    for name, grad in grads["eager"].items():
        torch.testing.assert_close(grads[IMPLEMENTATION][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_load_model_picks_it_and_the_saved_config_stays_plain(tmp_path, tiny_llama_dir):
    model = _tiny_moe("mixtral", 1)
    use_fast_experts(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not any("experts_implementation" in key for key in saved)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers: its own default
    assert plain.config._experts_implementation != IMPLEMENTATION
    loaded, _ = load_model(str(tmp_path))
    assert loaded.config._experts_implementation == IMPLEMENTATION
    dense, _ = load_model(str(tiny_llama_dir))
    assert not use_fast_experts(dense)  # a dense model has no experts to switch
