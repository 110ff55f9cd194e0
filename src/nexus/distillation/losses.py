"""Distillation losses: logit KD (forward KL, reverse KL, generalized JSD), top-k sparse KD,
CE, and :class:`ActivationAnchoringLoss` on hidden states.

Conventions (shapes: ``N`` scored tokens, ``V`` vocabulary, ``K`` cached top-k, ``H`` hidden):

* Every per-token function returns a ``(N,)`` tensor of per-token losses; reduction is the
  caller's. The training loop sums them and divides by the number of scored tokens of the
  *whole accumulated batch* (every micro-batch and every rank), so gradient accumulation and
  data parallelism give the same gradients as one big batch.
* KD is computed at temperature ``T`` and scaled by ``T**2`` (Hinton et al.), so its gradient
  magnitude does not shrink with ``T``.
* :func:`fused_lm_head_loss` never materializes the ``(N, V)`` logits of the whole batch: it
  walks over chunks of tokens, builds each chunk's logits from the hidden states and the LM
  head weight, computes the loss *and its gradient* for the chunk right away (autograd on the
  chunk only), and keeps only the ``(N, H)`` gradient of the hidden states and the ``(V, H)``
  gradient of the head. Peak extra memory is one chunk of logits, not ``B x T x V`` twice.

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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nexus.distillation.config import DIVERGENCES  # noqa: E402  (one list for config and losses)


# ----------------------------------------------------------------------------------------
# Divergences between two distributions given as log-probabilities over the same support.
# ----------------------------------------------------------------------------------------
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
        p = teacher_logp.exp()
        return (p * (teacher_logp - student_logp)).sum(-1)
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
    s_top = s_all.gather(-1, teacher_topk_idx.long())  # (N, K)
    s_tail = _log1mexp(torch.logsumexp(s_top, dim=-1))  # (N,)
    student = torch.cat([s_top, s_tail[:, None]], dim=-1)
    teacher = torch.cat([teacher_topk_logp.float(), teacher_tail_logp.float()[:, None]], dim=-1)
    return divergence(student, teacher, kind, beta) * (t * t)


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the data's own next tokens, per token: ``(N, V), (N,) -> (N,)``."""
    return F.cross_entropy(student_logits.float(), labels.long(), reduction="none")


# ----------------------------------------------------------------------------------------
# Teacher targets for one chunk of tokens
# ----------------------------------------------------------------------------------------
class LiveTeacher:
    """Teacher targets computed from the teacher's final hidden states: ``(N, Ht)`` -> logits."""

    def __init__(
        self, hidden: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor | None = None
    ):
        self.hidden = hidden
        self.weight = head_weight
        self.bias = head_bias

    def logits(self, start: int, end: int) -> torch.Tensor:
        with torch.no_grad():
            h = self.hidden[start:end].to(self.weight.dtype)
            return F.linear(h, self.weight, self.bias)


class CachedTeacher:
    """Teacher targets read from a top-k cache: ``(N, K)`` log-probs, ``(N, K)`` ids, ``(N,)`` tail."""

    def __init__(self, topk_logp: torch.Tensor, topk_idx: torch.Tensor, tail_logp: torch.Tensor):
        self.topk_logp, self.topk_idx, self.tail_logp = topk_logp, topk_idx, tail_logp


def chunk_loss(
    student_logits: torch.Tensor,
    teacher: LiveTeacher | CachedTeacher | None,
    labels: torch.Tensor,
    start: int,
    end: int,
    *,
    kind: str,
    temperature: float,
    beta: float,
    kd_weight: float,
    ce_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed weighted loss of tokens ``start:end``, and the summed KD and CE parts (detached)."""
    zero = student_logits.new_zeros((), dtype=torch.float32)
    kd = ce = zero
    total = zero
    if kd_weight and teacher is not None:
        if isinstance(teacher, LiveTeacher):
            kd_tok = kd_loss(
                student_logits, teacher.logits(start, end), kind=kind, temperature=temperature, beta=beta
            )
        else:
            kd_tok = topk_kd_loss(
                student_logits,
                teacher.topk_logp[start:end],
                teacher.topk_idx[start:end],
                teacher.tail_logp[start:end],
                kind=kind,
                temperature=temperature,
                beta=beta,
            )
        kd = kd_tok.sum()
        total = total + kd_weight * kd
    if ce_weight:
        ce = ce_loss(student_logits, labels).sum()
        total = total + ce_weight * ce
    return total, kd.detach(), ce.detach()


class _FusedHeadLoss(torch.autograd.Function):
    """Loss of ``hidden @ weight.T`` computed chunk by chunk, gradients formed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, labels, normalizer, opts):
        ctx.normalizer_value = normalizer
        compute_dtype = opts["compute_dtype"]
        chunk = opts["chunk_size"]
        n = hidden.shape[0]
        w = weight.detach().to(compute_dtype)
        b = None if bias is None else bias.detach().to(compute_dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32)
            if bias is not None and ctx.needs_input_grad[2]
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        kd_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            h = hidden[start:end].detach().to(compute_dtype)
            with torch.enable_grad():
                logits = F.linear(h, w, b).detach().requires_grad_(need_grad)
                loss, kd, ce = chunk_loss(
                    logits,
                    teacher,
                    labels[start:end],
                    start,
                    end,
                    kind=opts["kind"],
                    temperature=opts["temperature"],
                    beta=opts["beta"],
                    kd_weight=opts["kd_weight"],
                    ce_weight=opts["ce_weight"],
                )
                if need_grad:
                    (grad_logits,) = torch.autograd.grad(loss, logits)
            total += loss.detach()
            kd_sum += kd
            ce_sum += ce
            if need_grad:
                g = grad_logits.to(compute_dtype)  # (C, V)
                grad_hidden[start:end] = (g @ w).float()
                if grad_weight is not None:
                    grad_weight += (g.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        ctx.save_for_backward(
            *(x if x is not None else torch.empty(0) for x in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.input_dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return total / normalizer, kd_sum / normalizer, ce_sum / normalizer

    @staticmethod
    def backward(ctx, grad_out, _grad_kd, _grad_ce):
        saved = ctx.saved_tensors
        grads = []
        for has, g, dtype in zip(ctx.has, saved, ctx.input_dtypes, strict=True):
            grads.append((g * grad_out / ctx.normalizer_value).to(dtype) if has else None)
        return grads[0], grads[1], grads[2], None, None, None, None


def fused_lm_head_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    teacher: LiveTeacher | CachedTeacher | None,
    *,
    normalizer: float,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    head_bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kd_weight * KD + ce_weight * CE).sum() / normalizer`` over the ``N`` scored tokens.

    ``hidden``: ``(N, H)`` student final hidden states (after the final norm) at the scored
    positions; ``head_weight``: ``(V, H)``; ``labels``: ``(N,)`` next-token ids (for CE);
    ``teacher``: the teacher's targets for the same ``N`` positions. Returns the differentiable
    total and the detached KD and CE parts (each divided by ``normalizer``).
    Logit matmuls run in ``compute_dtype``; the softmax math runs in float32.
    """
    opts = {
        "kind": kind,
        "temperature": temperature,
        "beta": beta,
        "kd_weight": kd_weight,
        "ce_weight": ce_weight,
        "chunk_size": max(1, int(chunk_size)),
        "compute_dtype": compute_dtype,
    }
    return _FusedHeadLoss.apply(hidden, head_weight, head_bias, teacher, labels, float(normalizer), opts)


def reference_lm_head_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    normalizer: float,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """The plain, unchunked version of :func:`fused_lm_head_loss` (full logits, autograd)."""
    logits = hidden @ head_weight.t()
    total = logits.new_zeros((), dtype=torch.float32)
    if kd_weight and teacher_logits is not None:
        total = (
            total
            + kd_weight * kd_loss(logits, teacher_logits, kind=kind, temperature=temperature, beta=beta).sum()
        )
    if ce_weight:
        total = total + ce_weight * ce_loss(logits, labels).sum()
    return total / normalizer


# ----------------------------------------------------------------------------------------
# Activation anchoring
# ----------------------------------------------------------------------------------------
class ActivationAnchoringLoss(nn.Module):
    """Pull the student's hidden states toward the teacher's at critical layer pairs.

    For each pair ``(student_layer, teacher_layer)`` (indices into the decoder stacks; a layer's
    *output* is compared), the per-token distance is ``1 - cos(s, t)`` (``metric="cosine"``) or
    the mean squared error over the hidden dimension (``metric="mse"``; with ``normalize=True``
    both states are RMS-normalized first, so the scale of the residual stream does not dominate).
    Pairs are weighted by ``weights`` (default 1 each). When the hidden sizes differ, a learned
    ``nn.Linear(H_student, H_teacher)`` per pair maps the student state first; the projections
    train with the student and are saved apart from it (:meth:`projection_state_dict`), so the
    released student carries none.

    ``forward(student_states, teacher_states, mask=None, normalizer=None)``: dicts
    ``layer -> (N, H)`` (or ``(B, T, H)`` with ``mask`` ``(B, T)`` bool selecting the scored
    positions); returns the weighted sum over pairs of the per-token distance summed over tokens,
    divided by ``normalizer`` (default: the number of tokens).
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[int]],
        *,
        student_hidden: int,
        teacher_hidden: int,
        metric: str = "cosine",
        normalize: bool = False,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if metric not in ("cosine", "mse"):
            raise ValueError(f"anchoring metric must be cosine or mse, not {metric!r}")
        self.pairs = [(int(s), int(t)) for s, t in pairs]
        if not self.pairs:
            raise ValueError("ActivationAnchoringLoss needs at least one (student_layer, teacher_layer) pair")
        self.metric = metric
        self.normalize = normalize
        weights = list(weights) if weights is not None else [1.0] * len(self.pairs)
        if len(weights) != len(self.pairs):
            raise ValueError(f"{len(weights)} anchoring weights for {len(self.pairs)} pairs")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.projections = nn.ModuleDict()
        if student_hidden != teacher_hidden:
            for s, t in self.pairs:
                self.projections[f"{s}_{t}"] = nn.Linear(student_hidden, teacher_hidden, bias=False)

    @property
    def student_layers(self) -> list[int]:
        return sorted({s for s, _ in self.pairs})

    @property
    def teacher_layers(self) -> list[int]:
        return sorted({t for _, t in self.pairs})

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-token distance, ``(..., H), (..., H) -> (...)``, in float32."""
        s, t = s.float(), t.float()
        if self.metric == "cosine":
            return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)
        if self.normalize:
            s = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6)
            t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (s - t).pow(2).mean(-1)

    def forward(
        self,
        student_states: dict[int, torch.Tensor],
        teacher_states: dict[int, torch.Tensor],
        mask: torch.Tensor | None = None,
        normalizer: float | None = None,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=self.weights.device)
        n_tokens = 0
        for i, (s_layer, t_layer) in enumerate(self.pairs):
            s, t = student_states[s_layer], teacher_states[t_layer].detach()
            if mask is not None:
                s, t = s[mask.bool()], t[mask.bool()]  # (N, H)
            n_tokens = s.shape[0]
            key = f"{s_layer}_{t_layer}"
            if key in self.projections:
                proj = self.projections[key]
                s = F.linear(s.to(proj.weight.dtype), proj.weight)
            total = total + self.weights[i] * self.distance(s, t).sum()
        denom = float(normalizer) if normalizer is not None else max(1, n_tokens)
        return total / denom

    def projection_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.projections.state_dict().items()}


ExtraLoss = Callable[[object, dict], tuple[torch.Tensor, dict[str, float]]]
