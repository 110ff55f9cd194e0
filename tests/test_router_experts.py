"""Dense -> MoE conversion: exact equality before training, plain-transformers reload, partitions."""

from __future__ import annotations

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM

from nexus.errors import NexusError
from nexus.router.experts import (
    balanced_assign,
    coactivation_partition,
    dense_to_moe,
    even_partition,
    expert_width,
    fit_router,
    moe_layout,
)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    torch.manual_seed(0)
    return torch.randint(0, len(tiny_tokenizer), (2, 16))


def _dense(family, tokenizer, intermediate=128):
    return tiny.build_model(
        family, tokenizer, num_layers=3, intermediate=intermediate, tie=family == "llama", seed=3
    )


@pytest.mark.parametrize("family,arch", [("llama", "MixtralForCausalLM"), ("qwen2", "Qwen2MoeForCausalLM")])
@pytest.mark.parametrize("mode,experts", [("split", 3), ("split", 4), ("copy", 3)])
def test_moe_equals_dense_with_all_experts_and_uniform_routing(
    tiny_tokenizer, ids, family, arch, mode, experts
):
    dense = _dense(family, tiny_tokenizer)
    with torch.no_grad():
        ref = dense(ids).logits
    moe = dense_to_moe(dense, num_experts=experts, top_k=experts, mode=mode, router_init_std=0.0)
    assert type(moe).__name__ == arch
    with torch.no_grad():
        out = moe(ids).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # a wrong down-projection scale would be caught: the uncompensated MoE differs
    if mode == "split":
        for layer in moe.model.layers:
            layer.mlp.experts.down_proj.data /= experts
        with torch.no_grad():
            assert (moe(ids).logits - ref).abs().max() > 1e-3


def test_copy_mode_equals_dense_for_any_routing(tiny_tokenizer, ids):
    dense = _dense("llama", tiny_tokenizer)
    moe = dense_to_moe(dense, num_experts=3, top_k=1, mode="copy", router_init_std=1.0)
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, atol=2e-5, rtol=1e-4)


def test_split_is_smaller_per_token_and_same_total(tiny_tokenizer):
    dense = _dense("llama", tiny_tokenizer, intermediate=96)
    moe = dense_to_moe(dense, num_experts=3, top_k=1)
    dense_mlp = sum(p.numel() for n, p in dense.named_parameters() if ".mlp." in n)
    expert_mlp = sum(p.numel() for n, p in moe.named_parameters() if ".mlp.experts" in n)
    assert expert_mlp == dense_mlp  # 96 = 3 x 32: no padding, same total MLP parameters
    assert moe.config.intermediate_size == 32  # one expert: 1/3 of the dense MLP per token at top-1


def test_save_and_plain_transformers_reload_gives_identical_logits(tiny_tokenizer, ids, tmp_path):
    dense = _dense("qwen2", tiny_tokenizer)
    moe = dense_to_moe(dense, num_experts=3, top_k=2, expert_layers=[0, 2], seed=1)
    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2MoeForCausalLM"
    assert loaded.config.mlp_only_layers == [1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, moe(ids).logits, atol=0, rtol=0)
    layout = moe_layout(loaded)
    assert layout.expert_layers == [0, 2] and layout.top_k == 2 and layout.mode == "split"
    gen = loaded.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9)


def test_llama_to_mixtral_carries_numerics_config(tiny_tokenizer, ids, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rms_norm_eps=1e-3,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    )
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(config).eval()
    moe = dense_to_moe(dense, num_experts=3, top_k=3, router_init_std=0.0)
    assert moe.config.rms_norm_eps == 1e-3 and moe.config.head_dim == 32
    assert moe.config.rope_parameters["rope_type"] == "linear" and not moe.config.tie_word_embeddings
    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, dense(ids).logits, atol=2e-5, rtol=1e-4)


def test_partitions_cover_all_neurons():
    groups = even_partition(10, 3)
    assert [len(g) for g in groups] == [4, 4, 2]
    assert torch.equal(torch.cat(groups), torch.arange(10))
    assert expert_width(10, 3) == 8 and expert_width(1536, 3) == 512


def test_balanced_assign_respects_capacity_and_prefers_high_scores():
    scores = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    assign = balanced_assign(scores, capacity=2)
    assert assign.tolist() == [0, 0, 1, 1]


def test_coactivation_partition_recovers_planted_groups():
    # neurons 0..5 fire on tokens 0..49, neurons 6..11 on tokens 50..99 (shuffled order)
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(100, 12, generator=gen) * 0.05
    perm = torch.randperm(12, generator=gen)
    acts[:50, perm[:6]] += 1.0
    acts[50:, perm[6:]] += 1.0
    groups = coactivation_partition(acts, 2, seed=0)
    found = {frozenset(g.tolist()) for g in groups}
    assert found == {frozenset(perm[:6].tolist()), frozenset(perm[6:].tolist())}


def test_fit_router_prefers_the_expert_that_fires():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=gen)
    scores = torch.stack([x[:, 0], -x[:, 0], torch.zeros(400)], dim=1)  # expert 0 when x0 > 0, else 1
    w = fit_router(x, scores)
    pick = (x @ w.t()).argmax(dim=1)
    agree = (pick == torch.where(x[:, 0] > 0, 0, 1)).float().mean()
    assert agree > 0.95


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_experts": 1}, "at least 2"),
        ({"num_experts": 3, "top_k": 4}, "top-k must be between 1"),
        ({"num_experts": 3, "expert_layers": [0]}, "Mixtral puts experts in every layer"),
        ({"num_experts": 3, "mode": "clone"}, "split' or 'copy"),
    ],
)
def test_bad_requests_are_clear_errors(tiny_tokenizer, kwargs, message):
    dense = _dense("llama", tiny_tokenizer)
    with pytest.raises(NexusError, match=message):
        dense_to_moe(dense, **kwargs)


def test_unsupported_family_names_the_supported_ones(tiny_tokenizer):
    dense = tiny.build_model("mistral", tiny_tokenizer, num_layers=2)
    with pytest.raises(NexusError, match="supported families are llama, qwen2"):
        dense_to_moe(dense, num_experts=3)
