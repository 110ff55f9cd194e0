"""Distillation fidelity from two logit tensors: how closely the student's next-token
distribution follows the teacher's on the same tokens.

* ``kl``: mean over scored tokens of KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)),
  in nats per token (0 when the distributions are identical, never negative);
* ``top1_agreement``: fraction of scored tokens where both models' argmax token is the same.

Both are computed in float32 whatever the input dtype, one sequence chunk at a time so that
B x T x V probabilities are never held twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Fidelity:
    """Token-weighted fidelity figures; ``merge`` combines results from several batches."""

    kl: float  # mean KL(teacher || student) per scored token, nats
    top1_agreement: float  # fraction of scored tokens with the same argmax
    tokens: int  # number of scored tokens

    def merge(self, other: Fidelity) -> Fidelity:
        total = self.tokens + other.tokens
        if total == 0:
            return Fidelity(0.0, 0.0, 0)
        return Fidelity(
            (self.kl * self.tokens + other.kl * other.tokens) / total,
            (self.top1_agreement * self.tokens + other.top1_agreement * other.tokens) / total,
            total,
        )


def fidelity_metrics(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    chunk_size: int = 1024,
) -> Fidelity:
    """Mean KL(teacher || student) per token and top-1 agreement over the tokens where ``mask``.

    teacher_logits, student_logits: (B, T, V) or (N, V), same shape (same vocabulary).
    mask: (B, T) or (N,) bool, True on the positions to score; None scores every position.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)} (fidelity needs the same vocabulary)"
        )
    vocab = teacher_logits.shape[-1]
    t = teacher_logits.reshape(-1, vocab)  # (N, V)
    s = student_logits.reshape(-1, vocab)
    if mask is not None:
        keep = mask.reshape(-1).to(torch.bool)
        if keep.shape[0] != t.shape[0]:
            raise ValueError(f"mask has {keep.shape[0]} positions, logits have {t.shape[0]}")
        t, s = t[keep], s[keep]
    n = t.shape[0]
    if n == 0:
        return Fidelity(0.0, 0.0, 0)
    kl_sum, agree = 0.0, 0
    for start in range(0, n, chunk_size):
        tc = t[start : start + chunk_size].float()
        sc = s[start : start + chunk_size].float()
        log_pt = torch.log_softmax(tc, dim=-1)  # (n, V)
        log_ps = torch.log_softmax(sc, dim=-1)
        kl_sum += float((log_pt.exp() * (log_pt - log_ps)).sum())
        agree += int((tc.argmax(-1) == sc.argmax(-1)).sum())
    return Fidelity(kl_sum / n, agree / n, n)
