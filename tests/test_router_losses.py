"""Router losses against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from nexus.router.losses import (
    beta_entropy_loss,
    beta_entropy_terms,
    load_balancing_loss,
    router_domain_loss,
    router_z_loss,
)

LN2, LN3 = math.log(2), math.log(3)


def test_load_balancing_hand_computed():
    # 2 tokens, 2 experts. p_1 = softmax(ln3, 0) = (3/4, 1/4); p_2 = (1/4, 3/4) -> top-1: e0, e1
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    # f = (1/2, 1/2), p̄ = (1/2, 1/2): E * sum f*p̄ = 2 * (1/4 + 1/4) = 1
    assert load_balancing_loss(logits, top_k=1).item() == pytest.approx(1.0)
    # both tokens pick e0: p = (3/4, 1/4) twice -> f = (1, 0), p̄ = (3/4, 1/4): 2 * 3/4 = 1.5
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    assert load_balancing_loss(logits, top_k=1).item() == pytest.approx(1.5)


def test_load_balancing_is_transformers_divided_by_top_k():
    torch.manual_seed(0)
    layers = [torch.randn(20, 4) for _ in range(3)]
    for k in (1, 2):
        # transformers pools f and p̄ over layers before the product; ours is the per-layer mean
        refs = [load_balancing_loss_func((layer,), num_experts=4, top_k=k).item() / k for layer in layers]
        assert load_balancing_loss(layers, top_k=k).item() == pytest.approx(sum(refs) / 3, rel=1e-5)


def test_load_balancing_ignores_masked_tokens():
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3], [5.0, 0.0]])
    mask = torch.tensor([True, True, False])
    assert load_balancing_loss(logits, 1, mask).item() == pytest.approx(1.0)


def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [LN3, LN3]])  # logsumexp = ln2, ln6
    expected = (LN2**2 + math.log(6) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_beta_entropy_hand_computed():
    # p_1 = (3/4, 1/4), p_2 = (1/4, 3/4): p̄ uniform -> balance 0; H(p_t) = H(3/4, 1/4)
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    h_tok = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    balance, sharp = beta_entropy_terms(logits)
    assert balance.item() == pytest.approx(0.0, abs=1e-6)
    assert sharp.item() == pytest.approx(h_tok / LN2)
    # collapse: both tokens (3/4, 1/4) pick e0: top-1 load f = (1, 0), balance = 1 - H(f)/ln2 = 1
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    balance, _ = beta_entropy_terms(logits)
    assert balance.item() == pytest.approx(1.0)
    loss = beta_entropy_loss(logits, beta_entropy=0.5, beta_sharpness=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.0 + 0.2 * h_tok / LN2)
    # top-2 of 2 experts: every token uses both, f = (1/2, 1/2): balanced
    balance, _ = beta_entropy_terms(logits, top_k=2)
    assert balance.item() == pytest.approx(0.0, abs=1e-6)


def test_beta_entropy_sees_collapse_of_undecided_tokens():
    """Issue 17: p̄ nearly uniform while every token's top-1 is expert 0 is a collapse; the old
    entropy of p̄ called it balanced (3e-5), the top-k load entropy calls it 1."""
    logits = torch.tensor([[0.02, 0.0, 0.0]] * 6 + [[0.01, 0.0, 0.005]] * 2)
    probs = logits.softmax(-1)
    assert 1 - float(-(probs.mean(0) * probs.mean(0).log()).sum()) / LN3 < 1e-3  # p̄ looks uniform
    balance, _ = beta_entropy_terms(logits)
    assert balance.item() == pytest.approx(1.0)
    # three tokens per expert, one each: perfectly spread top-1 load -> 0
    spread = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert beta_entropy_terms(spread)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_beta_entropy_bounds_and_gradient_pushes_towards_balance():
    one_expert = torch.tensor([[30.0, 0.0, 0.0]] * 4)
    balance, sharp = beta_entropy_terms(one_expert)
    assert balance.item() == pytest.approx(1.0, abs=1e-6) and sharp.item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[1.0, 0.0, 0.0]] * 4, requires_grad=True)
    beta_entropy_loss(logits, 1.0).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()  # descent lowers expert 0


def test_router_domain_loss_hand_computed_and_ignores_unknown():
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0], [9.0, -9.0]])
    domains = torch.tensor([0, 1, -1])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert router_domain_loss(logits, domains).item() == pytest.approx(expected)
    assert router_domain_loss(logits, torch.tensor([-1, -1, -1])).item() == 0.0
