"""The fast top-k sampler used for the teacher-written general rows."""

from __future__ import annotations

import pytest
import torch

from nexus.inference.sampling import TopKSampler


def _draws(sampler: TopKSampler, scores: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([sampler(None, scores.clone()).argmax(-1) for _ in range(n)])


def test_one_finite_token_drawn_inside_the_top_k_and_seeded():
    scores = torch.randn(4, 300)
    out = TopKSampler(1.0, top_k=5, generator=torch.Generator().manual_seed(0))(None, scores.clone())
    assert (torch.isfinite(out).sum(-1) == 1).all()
    top5 = scores.topk(5, dim=-1).indices
    assert (top5 == out.argmax(-1, keepdim=True)).any(-1).all()
    a = _draws(TopKSampler(1.0, top_k=5, generator=torch.Generator().manual_seed(1)), scores, 20)
    b = _draws(TopKSampler(1.0, top_k=5, generator=torch.Generator().manual_seed(1)), scores, 20)
    assert torch.equal(a, b) and len(a.unique()) > 4  # reproducible, and it does sample


def test_frequencies_follow_the_tempered_top_k_distribution():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -5.0]])
    sampler = TopKSampler(0.5, top_k=3, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(_draws(sampler, scores, 4000).flatten(), minlength=5).float() / 4000
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, -1)
    assert torch.allclose(counts[:3], expected, atol=0.03) and counts[3:].sum() == 0


def test_top_p_keeps_the_nucleus_only_and_bad_settings_are_refused():
    scores = torch.tensor([[5.0, 1.0, 0.9, 0.8]])
    sampler = TopKSampler(1.0, top_k=4, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert set(_draws(sampler, scores, 200).flatten().tolist()) == {0}
    for bad in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": -1}, {"temperature": 1.0, "top_p": 0.0}):
        with pytest.raises(ValueError, match="bad sampling"):
            TopKSampler(**bad)


def test_whole_vocabulary_sampling_follows_the_tempered_distribution():
    """top_k=0 (on-policy distillation's sampler) draws from every token, never a masked one."""
    scores = torch.tensor([[2.0, float("-inf"), 1.0, 0.0, -1.0, float("-inf")]])
    sampler = TopKSampler(0.7, top_k=0, generator=torch.Generator().manual_seed(0))
    draws = _draws(sampler, scores.expand(3, -1), 3000).flatten()
    counts = torch.bincount(draws, minlength=6).float() / draws.numel()
    expected = torch.softmax(scores[0] / 0.7, -1)
    assert counts[1] == 0 and counts[5] == 0 and torch.allclose(counts, expected, atol=0.02)
    out = TopKSampler(1.0, top_k=0, generator=torch.Generator().manual_seed(3))(None, torch.randn(5, 40))
    assert (torch.isfinite(out).sum(-1) == 1).all()
    a = _draws(TopKSampler(1.0, top_k=0, generator=torch.Generator().manual_seed(1)), scores, 50)
    b = _draws(TopKSampler(1.0, top_k=0, generator=torch.Generator().manual_seed(1)), scores, 50)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="bad sampling"):
        TopKSampler(1.0, top_k=0, top_p=0.9)
