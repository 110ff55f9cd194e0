"""Collapse demonstration on a tiny model: a router that starts skewed towards one expert stays
skewed without the balancing terms (beta_entropy = 0, load balancing = 0), and spreads its load
with them. Run with ``-s`` to see the domains x experts tables."""

from __future__ import annotations

import tiny
import torch

from nexus.data.corpus import load_source
from nexus.data.domains import build_domain_data, tag_examples
from nexus.router.config import RouterConfig
from nexus.router.experts import collect_mlp_activations, dense_to_moe
from nexus.router.objective import RouterLogits, RouterObjective, routing_report
from nexus.router.run import calibration_batches
from nexus.trainer.loop import Trainer
from nexus.trainer.teacher import LiveTeacherSource

STEPS = 40


def _train(tmp_path, tokenizer, data, *, lb: float, beta: float):
    torch.manual_seed(0)
    teacher = tiny.build_model("llama", tokenizer, num_layers=2, intermediate=96, seed=0)
    dense = tiny.build_model("llama", tokenizer, num_layers=2, intermediate=96, seed=0)
    # skewed start, as after an unlucky initialization: each router's expert 0 points along the
    # mean MLP input, so nearly every token prefers it by a logit margin of about 6
    batches = calibration_batches(data.train, tokenizer, 1024)
    inputs, _, _ = collect_mlp_activations(dense, batches, [0, 1], max_tokens=1024)
    skew = {}
    for i, x in inputs.items():
        w = torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(i)) * 0.02
        mean = x.mean(dim=0)
        w[0] += 6.0 * mean / mean.pow(2).sum()
        skew[i] = w
    moe = dense_to_moe(
        dense, num_experts=3, top_k=1, router_weights=skew, expert_names=["code", "math", "chat"]
    )
    cfg = RouterConfig(
        max_steps=STEPS,
        lr=5e-3,
        warmup_steps=0,
        micro_batch_size=4,
        seq_len=64,
        lb_weight=lb,
        beta_entropy=beta,
        z_weight=0.0,
        eval_every=0,
        save_every=STEPS,
        precision="fp32",
        device="cpu",
    )
    capture = RouterLogits(moe, [0, 1])
    objective = RouterObjective(cfg, capture=capture, top_k=1, pad_id=tokenizer.pad_token_id)
    moe.train()
    loop = Trainer(
        moe,
        tokenizer=tokenizer,
        train=data.train,
        heldout=None,
        teacher=LiveTeacherSource(teacher),
        settings=cfg,
        out_dir=tmp_path / f"lb{lb}-beta{beta}",
        run_config=cfg,
        result_hash="test",
        extra_loss=objective,
        results_dir=tmp_path / "results",
        phase=4,
    )
    loop.fit()
    capture.remove()
    return routing_report(
        moe,
        data.train,
        layers=[0, 1],
        num_experts=3,
        top_k=1,
        domains=data.domains,
        pad_id=tokenizer.pad_token_id,
        max_rows=32,
    )


def test_balancing_terms_prevent_collapse(tmp_path, tiny_tokenizer):
    examples = tag_examples(load_source("builtin:code=12,math=40,chat=0"), "chat")
    grouped = {
        "code": [e for e in examples if e.domain == "code"],
        "math": [e for e in examples if e.domain == "math"],
    }
    data = build_domain_data(
        grouped,
        tiny_tokenizer,
        seq_len=64,
        weights={"code": 1.0, "math": 1.0},
        loss_on="all",
        heldout_fraction=0.0,
    )
    free = _train(tmp_path, tiny_tokenizer, data, lb=0.0, beta=0.0)
    balanced = _train(tmp_path, tiny_tokenizer, data, lb=0.5, beta=1.0)
    print("\nwithout load balancing / beta_entropy:\n" + free.load_table(["code", "math", "chat"]))
    print(free.entropy_table())
    print("\nwith lb_weight=0.5, beta_entropy=1.0:\n" + balanced.load_table(["code", "math", "chat"]))
    print(balanced.entropy_table())
    # without the terms the skew persists (KD alone does not undo it); with them load spreads
    assert free.collapse_warnings(0.7), "the unregularized router was expected to stay skewed"
    assert not balanced.collapse_warnings(0.6)
    assert free.expert_share().max() > balanced.expert_share().max() + 0.15
    assert (balanced.mean_distribution_entropy() > free.mean_distribution_entropy() + 0.1).all()
