"""Issue 17: the routed student starts exactly where the dense student is.

``mode=copy`` (sparse upcycling): every expert is the dense MLP and both target classes
renormalize the top-k routing weights to sum to 1 (Mixtral always; Qwen2-MoE with
``norm_topk_prob=True``, which the conversion sets), so under top-1 the MoE layer's output is
exactly the dense MLP's whatever the router picks. ``router_init=fit`` makes the routers domain
classifiers (expert i <- domain i), so the copies see different tokens from the first step and
the load follows the domain mix instead of collapsing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM

from nexus.data.corpus import load_source
from nexus.data.domains import build_domain_data, tag_examples
from nexus.data.formats import DOMAINS
from nexus.router.config import RouterConfig
from nexus.router.experts import moe_layout
from nexus.router.objective import routing_report
from nexus.router.run import convert_student


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    examples = tag_examples(load_source("builtin:code=16,math=40,chat=24", chat_answers=False), "chat")
    # the built-in chat prompts come without answers (the teacher writes them); give each a reply
    examples = [
        replace(e, response=f"Sure. Here are some thoughts on this: {e.prompt}") if e.domain == "chat" else e
        for e in examples
    ]
    grouped = {d: [e for e in examples if e.domain == d] for d in DOMAINS}
    assert all(grouped.values()), {d: len(v) for d, v in grouped.items()}
    return build_domain_data(
        grouped,
        tiny_tokenizer,
        seq_len=64,
        weights=dict.fromkeys(DOMAINS, 1.0),
        loss_on="all",
        heldout_fraction=0.0,
    )


class _Data:
    def __init__(self, train):
        self.train = train


@pytest.mark.parametrize("family,arch", [("llama", "MixtralForCausalLM"), ("qwen2", "Qwen2MoeForCausalLM")])
def test_copy_upcycling_is_the_dense_student_at_step_zero(tiny_tokenizer, data, family, arch, tmp_path):
    dense = tiny.build_model(family, tiny_tokenizer, num_layers=2, intermediate=96, seed=5)
    cfg = RouterConfig(mode="copy", top_k=1, num_experts=3, router_init="fit", calibration_tokens=2048)
    moe = convert_student(dense, cfg, _Data(data.train), tiny_tokenizer, [0, 1])
    assert type(moe).__name__ == arch and moe.config.num_experts_per_tok == 1
    batch = data.train.batch(list(range(4)))
    with torch.no_grad():
        ref = dense(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        out = moe(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)

    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers
    assert type(loaded).__name__ == arch and moe_layout(loaded).mode == "copy"
    with torch.no_grad():
        again = loaded(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    torch.testing.assert_close(again, ref, atol=2e-5, rtol=1e-4)
    assert loaded.generate(batch["input_ids"][:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)

    # the routers are not all-to-one: each domain goes mostly to its own expert
    report = routing_report(
        moe, data.train, layers=[0, 1], num_experts=3, top_k=1, domains=DOMAINS,
        pad_id=tiny_tokenizer.pad_token_id, max_rows=48,
    )  # fmt: skip
    print("\n" + report.load_table(list(DOMAINS)))
    assert report.expert_share().max() < 0.7, report.expert_share()
    load = report.load()  # (domains + other, experts): share of each domain's slots
    for d in range(len(DOMAINS)):
        assert int(load[d].argmax()) == d, load
