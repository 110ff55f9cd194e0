"""Distillation losses against naive references and their mathematical properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nexus.trainer.anchoring import ActivationAnchoringLoss
from nexus.trainer.divergence import (
    DIVERGENCES,
    ce_loss,
    divergence,
    kd_loss,
    topk_kd_loss,
)
from nexus.trainer.fused import CachedTeacher, LiveTeacher, fused_lm_head_loss, reference_lm_head_loss


def _logits(n=13, v=37, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_of_identical_distributions_is_zero(kind):
    logp = F.log_softmax(_logits(), -1)
    assert divergence(logp, logp, kind).abs().max() < 1e-6


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_is_positive_for_different_distributions(kind):
    s, t = F.log_softmax(_logits(seed=1), -1), F.log_softmax(_logits(seed=2), -1)
    assert (divergence(s, t, kind) > 0).all()


def test_forward_and_reverse_kl_match_torch_kl_div():
    s, t = F.log_softmax(_logits(seed=1), -1), F.log_softmax(_logits(seed=2), -1)
    fwd = F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # KL(t || s)
    rev = F.kl_div(t, s, reduction="none", log_target=True).sum(-1)  # KL(s || t)
    torch.testing.assert_close(divergence(s, t, "forward_kl"), fwd)
    torch.testing.assert_close(divergence(s, t, "reverse_kl"), rev)


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    s, t = F.log_softmax(_logits(seed=1), -1), F.log_softmax(_logits(seed=2), -1)
    a, b = divergence(s, t, "jsd", 0.5), divergence(t, s, "jsd", 0.5)
    torch.testing.assert_close(a, b)
    assert (a <= math.log(2) + 1e-6).all()


def test_jsd_matches_trl_definition():
    # TRL GKDTrainer.generalized_jsd_loss: mixture = beta * teacher + (1 - beta) * student.
    s, t, beta = F.log_softmax(_logits(seed=3), -1), F.log_softmax(_logits(seed=4), -1), 0.3
    m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), 0)
    ref = beta * F.kl_div(m, t, reduction="none", log_target=True).sum(-1) + (1 - beta) * F.kl_div(
        m, s, reduction="none", log_target=True
    ).sum(-1)
    torch.testing.assert_close(divergence(s, t, "jsd", beta), ref)


def test_temperature_scales_by_t_squared():
    s, t = _logits(seed=1), _logits(seed=2)
    t2 = kd_loss(s, t, temperature=2.0)
    manual = divergence(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), "forward_kl") * 4
    torch.testing.assert_close(t2, manual)


def test_topk_with_full_vocabulary_equals_full_kl():
    s, t = _logits(seed=1), _logits(seed=2)
    t_logp = F.log_softmax(t, -1)
    values, idx = t_logp.topk(t.shape[-1], -1)
    tail = torch.full((t.shape[0],), -30.0)
    sparse = topk_kd_loss(s, values, idx, tail)
    torch.testing.assert_close(sparse, kd_loss(s, t), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_is_a_lower_bound_of_full_kl_and_zero_at_match(kind):
    s, t = _logits(seed=1), _logits(seed=2)
    t_logp = F.log_softmax(t, -1)
    values, idx = t_logp.topk(8, -1)
    tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
    sparse = topk_kd_loss(s, values, idx, tail, kind=kind)
    assert (sparse <= kd_loss(s, t, kind=kind) + 1e-5).all()
    assert topk_kd_loss(t, values, idx, tail, kind=kind).abs().max() < 1e-4


def _case(n=41, h=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    t_hidden, t_weight = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, t_hidden, t_weight, labels


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("chunk,row_block", [(1, None), (7, None), (7, 3), (1024, None), (1024, 4)])
def test_fused_chunked_loss_matches_reference_values_and_gradients(kind, chunk, row_block):
    hidden, weight, th, tw, labels = _case()
    kw = {"normalizer": 60.0, "kind": kind, "temperature": 1.5, "ce_weight": 0.3, "kd_weight": 0.7}
    fused, kd, ce = fused_lm_head_loss(
        hidden, weight, labels, LiveTeacher(th, tw), chunk_size=chunk, row_block=row_block, **kw
    )
    ref = reference_lm_head_loss(hidden, weight, labels, th @ tw.t(), **kw)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(0.7 * kd + 0.3 * ce, ref.detach())
    g_fused = torch.autograd.grad(fused, (hidden, weight))
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk,row_block", [(1024, None), (7, 3)])
def test_per_token_weights_score_gold_tokens_by_ce_alone(chunk, row_block):
    """gold_weight: some tokens get CE only (their own answer is the target), the rest KD + CE."""
    hidden, weight, th, tw, labels = _case()
    gold = torch.arange(len(labels)) % 3 == 0
    kd_w, ce_w = torch.where(gold, 0.0, 0.7), torch.where(gold, 1.5, 0.3)
    fused, kd, ce = fused_lm_head_loss(
        hidden, weight, labels, LiveTeacher(th, tw), normalizer=60.0, kd_weight=kd_w, ce_weight=ce_w,
        chunk_size=chunk, row_block=row_block, temperature=1.5,
    )  # fmt: skip
    logits = hidden @ weight.t()
    per_kd = kd_loss(logits, th @ tw.t(), kind="forward_kl", temperature=1.5)
    per_ce = ce_loss(logits, labels)
    ref = ((kd_w * per_kd).sum() + (ce_w * per_ce).sum()) / 60.0
    torch.testing.assert_close(fused, ref)
    # the metrics: unweighted, over the tokens that use each term
    torch.testing.assert_close(kd, per_kd[~gold].sum().detach() / 60.0)
    torch.testing.assert_close(ce, per_ce.sum().detach() / 60.0)
    g_fused = torch.autograd.grad(fused, (hidden, weight))
    for a, b in zip(g_fused, torch.autograd.grad(ref, (hidden, weight)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # gold tokens' gradient does not depend on the teacher
    other = fused_lm_head_loss(hidden, weight, labels, LiveTeacher(th * 3, tw), normalizer=60.0,
                               kd_weight=kd_w, ce_weight=ce_w, temperature=1.5)[0]  # fmt: skip
    torch.testing.assert_close(torch.autograd.grad(other, hidden)[0][gold], g_fused[0][gold])


def test_fused_loss_bf16_compute_is_close_to_fp32():
    hidden, weight, th, tw, labels = _case()
    teacher = LiveTeacher(th, tw)
    fp32, _, _ = fused_lm_head_loss(hidden, weight, labels, teacher, normalizer=41.0)
    bf16, _, _ = fused_lm_head_loss(
        hidden, weight, labels, teacher, normalizer=41.0, compute_dtype=torch.bfloat16
    )
    assert abs(float(fp32) - float(bf16)) / float(fp32) < 0.05


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_topk_loss_matches_reference_gradients(kind, temperature):
    hidden, weight, th, tw, labels = _case()
    t_logp = F.log_softmax(th @ tw.t() / temperature, -1)
    values, idx = t_logp.topk(6, -1)
    tail = torch.log1p(-values.exp().sum(-1))
    cached = CachedTeacher(values.half(), idx, tail)
    kw = {"kind": kind, "temperature": temperature}
    fused, _, _ = fused_lm_head_loss(
        hidden, weight, labels, cached, normalizer=41.0, chunk_size=9, row_block=4, ce_weight=0.2, **kw
    )
    logits = hidden @ weight.t()
    ref = (topk_kd_loss(logits, values.half(), idx, tail, **kw) + 0.2 * ce_loss(logits, labels)).sum() / 41.0
    torch.testing.assert_close(fused, ref)
    for a, b in zip(
        torch.autograd.grad(fused, (hidden, weight)), torch.autograd.grad(ref, (hidden, weight)), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_global_normalizer_makes_accumulation_equal_one_big_batch():
    hidden, weight, th, tw, labels = _case(n=30)
    full, _, _ = fused_lm_head_loss(hidden, weight, labels, LiveTeacher(th, tw), normalizer=30.0)
    g_full = torch.autograd.grad(full, weight)[0]
    # Two micro-batches of unequal size, each divided by the *global* token count.
    acc = torch.zeros_like(weight)
    for sl in (slice(0, 7), slice(7, 30)):
        part, _, _ = fused_lm_head_loss(
            hidden[sl], weight, labels[sl], LiveTeacher(th[sl], tw), normalizer=30.0
        )
        acc += torch.autograd.grad(part, weight)[0]
    torch.testing.assert_close(acc, g_full, atol=1e-6, rtol=1e-5)


def test_anchoring_cosine_is_zero_for_identical_states_and_positive_otherwise():
    loss = ActivationAnchoringLoss([[0, 1], [2, 3]], student_hidden=8, teacher_hidden=8)
    s = {0: torch.randn(2, 5, 8), 2: torch.randn(2, 5, 8)}
    t = {1: s[0].clone(), 3: s[2].clone()}
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert float(loss(s, t, mask)) < 1e-5
    t[3] = torch.randn(2, 5, 8)
    assert float(loss(s, t, mask)) > 0.1
    assert len(loss.projections) == 0


def test_anchoring_mse_normalized_ignores_scale_and_weights_pairs():
    loss = ActivationAnchoringLoss([[0, 0]], student_hidden=8, teacher_hidden=8, metric="mse", normalize=True)
    x = torch.randn(6, 8)
    assert float(loss({0: x}, {0: 5 * x})) < 1e-5
    plain = ActivationAnchoringLoss([[0, 0]], student_hidden=8, teacher_hidden=8, metric="mse")
    y = torch.randn(6, 8)
    torch.testing.assert_close(plain({0: x}, {0: y}), ((x - y) ** 2).mean())
    weighted = ActivationAnchoringLoss(
        [[0, 0]], student_hidden=8, teacher_hidden=8, metric="mse", weights=[3.0]
    )
    torch.testing.assert_close(weighted({0: x}, {0: y}), 3 * ((x - y) ** 2).mean())


def test_anchoring_projection_when_hidden_sizes_differ_is_trainable_and_saved_apart():
    loss = ActivationAnchoringLoss([[1, 2]], student_hidden=4, teacher_hidden=8)
    assert set(loss.projection_state_dict()) == {"1_2.weight"}
    out = loss({1: torch.randn(5, 4, requires_grad=True)}, {2: torch.randn(5, 8)})
    out.backward()
    assert loss.projections["1_2"].weight.grad is not None
    with pytest.raises(ValueError):
        ActivationAnchoringLoss([], student_hidden=4, teacher_hidden=4)
