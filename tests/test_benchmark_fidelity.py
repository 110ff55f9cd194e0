import pytest
import torch

from nexus.trainer.evaluate import Fidelity, fidelity_metrics


def _naive(t, s, mask):
    kls, agree = [], []
    for b in range(t.shape[0]):
        for i in range(t.shape[1]):
            if not mask[b, i]:
                continue
            p = torch.softmax(t[b, i].double(), -1)
            q = torch.softmax(s[b, i].double(), -1)
            kls.append(float((p * (p.log() - q.log())).sum()))
            agree.append(int(t[b, i].argmax() == s[b, i].argmax()))
    return sum(kls) / len(kls), sum(agree) / len(agree), len(kls)


def test_identical_logits_have_zero_kl_and_full_agreement():
    x = torch.randn(2, 5, 11)
    result = fidelity_metrics(x, x.clone())
    assert result.kl == pytest.approx(0.0, abs=1e-6)
    assert result.top1_agreement == 1.0 and result.tokens == 10


def test_matches_naive_reference_with_mask_and_chunks():
    torch.manual_seed(0)
    t, s = torch.randn(3, 7, 13), torch.randn(3, 7, 13)
    mask = torch.rand(3, 7) > 0.3
    kl, agree, n = _naive(t, s, mask)
    result = fidelity_metrics(t, s, mask, chunk_size=4)
    assert result.kl == pytest.approx(kl, rel=1e-5)
    assert result.top1_agreement == pytest.approx(agree)
    assert result.tokens == n
    assert result.kl > 0


def test_kl_direction_is_teacher_to_student():
    t = torch.tensor([[[4.0, 0.0, 0.0]]])
    s = torch.tensor([[[0.0, 0.0, 0.0]]])
    p = torch.softmax(t[0, 0], -1)
    expected = float((p * (p.log() - torch.log(torch.full((3,), 1 / 3)))).sum())
    assert fidelity_metrics(t, s).kl == pytest.approx(expected, rel=1e-5)
    assert fidelity_metrics(s, t).kl != pytest.approx(expected, rel=1e-3)


def test_bf16_inputs_and_merge_and_errors():
    t, s = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    full = fidelity_metrics(t, s)
    halves = fidelity_metrics(t[:1], s[:1]).merge(fidelity_metrics(t[1:], s[1:]))
    assert halves.kl == pytest.approx(full.kl) and halves.tokens == full.tokens
    assert fidelity_metrics(t.bfloat16(), s.bfloat16()).kl == pytest.approx(full.kl, rel=0.05)
    assert fidelity_metrics(t, s, torch.zeros(2, 4, dtype=torch.bool)) == Fidelity(0.0, 0.0, 0)
    with pytest.raises(ValueError, match="same vocabulary"):
        fidelity_metrics(t, torch.randn(2, 4, 10))
