"""Divergences between next-token distributions: the one place KD, the training loss and every
fidelity figure (held-out KL, top-1 agreement, the benchmark's teacher/student KL) are computed.

Conventions (shapes: ``N`` scored tokens, ``V`` vocabulary, ``K`` cached top-k, ``H`` hidden):

* Every per-token function returns a ``(N,)`` tensor of per-token losses; reduction is the
  caller's. The training loop sums them and divides by the number of scored tokens of the
  *whole accumulated batch* (every micro-batch and every rank), so gradient accumulation and
  data parallelism give the same gradients as one big batch.
* KD is computed at temperature ``T`` and scaled by ``T**2`` (Hinton et al.), so its gradient
  magnitude does not shrink with ``T``.
* :func:`nexus.trainer.fused.fused_lm_head_loss` never materializes the ``(N, V)`` logits of the whole batch: it
  walks over chunks of tokens, builds each chunk's logits from the hidden states and the LM
  head weight, computes the loss *and its gradient* for the chunk right away (closed-form
  gradients, :func:`~nexus.trainer.fused.chunk_loss_and_grad`: a few fused passes over the chunk's ``(C, V)`` logits
  instead of an autograd graph), and keeps only the ``(N, H)`` gradient of the hidden states
  and the ``(V, H)`` gradient of the head. Peak extra memory is one chunk's logits and a few
  float32 temporaries of that size, not ``B x T x V`` twice.

Top-k tail mass (the documented choice): the cache stores, per token, the teacher's top-k
log-probabilities at temperature ``T`` and the log of the remaining probability mass
``log(1 - sum_topk p)``. The sparse KD compares the two distributions coarsened to ``K + 1``
bins (the teacher's top-k tokens and one "everything else" bin), with the student's tail bin
computed exactly from its full softmax. This is the KL between the coarsened distributions:
zero iff the student matches the teacher on those bins, never larger than the full KL, and,
unlike renormalizing over the top-k, it does not ask the student to put *zero* mass on the
tail.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nexus.trainer.settings import DIVERGENCES


# ----------------------------------------------------------------------------------------
# Divergences between two distributions given as log-probabilities over the same support.
# ----------------------------------------------------------------------------------------
def forward_kl_terms(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """``p_t * (log p_t - log p_s)`` elementwise, ``(N, S), (N, S) -> (N, S)``: summed over the
    last axis it is KL(teacher || student) per row; summed whole, the KL of ``N`` tokens."""
    return teacher_logp.exp() * (teacher_logp - student_logp)


def divergence(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str, beta: float = 0.5
) -> torch.Tensor:
    """Per-row divergence between distributions given as log-probs, shape ``(N, S) -> (N,)``.

    ``forward_kl`` = KL(teacher || student) (mean-seeking, the classic KD);
    ``reverse_kl`` = KL(student || teacher) (mode-seeking);
    ``jsd`` = generalized Jensen-Shannon with mixture ``m = beta * teacher + (1 - beta) * student``:
    ``beta * KL(teacher || m) + (1 - beta) * KL(student || m)`` (TRL's GKD definition; beta=0.5 is
    the symmetric JSD; beta in (0, 1)).
    """
    if kind == "forward_kl":
        return forward_kl_terms(teacher_logp, student_logp).sum(-1)
    if kind == "reverse_kl":
        q = student_logp.exp()
        return (q * (student_logp - teacher_logp)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        mixture = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta))
        kl_teacher = (teacher_logp.exp() * (teacher_logp - mixture)).sum(-1)
        kl_student = (student_logp.exp() * (student_logp - mixture)).sum(-1)
        return beta * kl_teacher + (1.0 - beta) * kl_student
    raise ValueError(f"unknown divergence {kind!r} (choose from {', '.join(DIVERGENCES)})")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Full-vocabulary KD per token: ``(N, V), (N, V) -> (N,)``, scaled by ``T**2``.

    Computed in float32 whatever the input dtype.
    """
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return divergence(s, p, kind, beta) * (t * t)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_topk_logp: torch.Tensor,
    teacher_topk_idx: torch.Tensor,
    teacher_tail_logp: torch.Tensor,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Sparse KD against cached teacher top-k, per token: ``(N, V), (N, K), (N, K), (N,) -> (N,)``.

    ``teacher_topk_logp`` are the teacher's log-probabilities at temperature ``T`` of the tokens
    ``teacher_topk_idx``, ``teacher_tail_logp`` the log of the remaining mass (see the module
    docstring for the ``K + 1`` bin construction). Scaled by ``T**2``.
    """
    t = float(temperature)
    s_all = F.log_softmax(student_logits.float() / t, dim=-1)  # (N, V)
    student, teacher = topk_bins(s_all, teacher_topk_logp, teacher_topk_idx, teacher_tail_logp)
    return divergence(student, teacher, kind, beta) * (t * t)


def topk_bins(
    student_logp: torch.Tensor,
    teacher_topk_logp: torch.Tensor,
    teacher_topk_idx: torch.Tensor,
    teacher_tail_logp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions on the ``K + 1`` bins of a cached teacher (its top-k tokens + the tail).

    ``(N, V)`` student log-probs and the teacher's ``(N, K)``, ``(N, K)``, ``(N,)`` cache rows ->
    ``(N, K + 1)`` student and teacher bin log-probs (float32), the student's tail exact.
    """
    s_top = student_logp.gather(-1, teacher_topk_idx.long())  # (N, K)
    s_tail = _log1mexp(torch.logsumexp(s_top, dim=-1))  # (N,)
    student = torch.cat([s_top, s_tail[:, None]], dim=-1)
    teacher = torch.cat([teacher_topk_logp.float(), teacher_tail_logp.float()[:, None]], dim=-1)
    return student, teacher


def top1_matches(student_logits: torch.Tensor, teacher_top1: torch.Tensor) -> torch.Tensor:
    """``(N, V), (N,) -> ()``: how many rows have the teacher's top-1 token as the student's argmax."""
    return (student_logits.argmax(-1) == teacher_top1).sum()


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the data's own next tokens, per token: ``(N, V), (N,) -> (N,)``."""
    return F.cross_entropy(student_logits.float(), labels.long(), reduction="none")
