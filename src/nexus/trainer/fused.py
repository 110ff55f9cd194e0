"""The chunked (fused LM-head) training loss: KD + CE of ``N`` scored tokens without ever
holding their ``(N, V)`` logits, gradients in closed form (see :mod:`nexus.trainer.divergence`
for the divergences and the conventions; :func:`reference_lm_head_loss` is the plain version
it is tested against).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nexus.trainer.divergence import DIVERGENCES, ce_loss, divergence, kd_loss, topk_bins


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

    def rows(self, start: int, end: int) -> CachedTeacher:
        return CachedTeacher(self.topk_logp[start:end], self.topk_idx[start:end], self.tail_logp[start:end])


def _log_softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 ``log_softmax(logits / T)`` without an extra float32 copy of ``logits`` when T=1."""
    if temperature == 1.0:
        return F.log_softmax(logits, dim=-1, dtype=torch.float32)
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _divergence_and_grad(
    s: torch.Tensor, q: torch.Tensor, teacher_logp: torch.Tensor, kind: str, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row :func:`divergence` of full-vocabulary log-probs and its gradient w.r.t. the logits.

    ``s`` = student log-probs, ``q = exp(s)``; the logits ``z`` give ``s = z - logsumexp(z)``, so
    ``dL/dz = G - q * sum(G)`` with ``G = dL/ds``. Closed forms (no autograd graph, few passes):
    forward KL ``G = -p`` so ``dL/dz = q - p``; reverse KL ``dL/dz = q * (d - <q, d>)`` with
    ``d = s - t``; JSD ``dL/dz = (1 - beta) * q * (d - <q, d>)`` with ``d = s - log m``.
    """
    if kind == "forward_kl":
        p = teacher_logp.exp()
        rows = torch.linalg.vecdot(p, teacher_logp - s)
        return rows, q - p
    if kind == "reverse_kl":
        d = s - teacher_logp
        rows = torch.linalg.vecdot(q, d)
        return rows, q * (d - rows[:, None])
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        logm = torch.logaddexp(teacher_logp + math.log(beta), s + math.log(1.0 - beta))
        d = s - logm
        q_d = torch.linalg.vecdot(q, d)
        rows = beta * torch.linalg.vecdot(teacher_logp.exp(), teacher_logp - logm) + (1.0 - beta) * q_d
        return rows, (1.0 - beta) * q * (d - q_d[:, None])
    raise ValueError(f"unknown divergence {kind!r} (choose from {', '.join(DIVERGENCES)})")


def _topk_divergence_and_grad(
    s: torch.Tensor, q: torch.Tensor, teacher: CachedTeacher, kind: str, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row divergence on the ``K + 1`` bins (see the module docstring) and ``dL/dz``.

    The bins are tiny, so ``G = dL/d(bin log-probs)`` comes from autograd on ``(N, K + 1)``; the
    chain rule to the full logits is closed-form: with ``g`` = the top-k part of ``G``, ``g_tail``
    its tail entry and ``Q_tail`` the student's tail mass,
    ``dL/dz_i = q_i * (g_tail / Q_tail - sum(G)) + [i in top-k] * (g_i - q_i * g_tail / Q_tail)``.
    """
    idx = teacher.topk_idx.long()
    bins, target = topk_bins(s, teacher.topk_logp, idx, teacher.tail_logp)
    s_top, s_tail = bins[:, :-1], bins[:, -1]
    bins.requires_grad_(True)
    with torch.enable_grad():
        rows = divergence(bins, target, kind, beta)
        (g,) = torch.autograd.grad(rows.sum(), bins)
    g_top, g_tail = g[:, :-1], g[:, -1]
    tail_scale = g_tail * torch.exp(-s_tail)  # g_tail / Q_tail
    grad = q * (tail_scale - g.sum(-1))[:, None]
    grad.scatter_add_(-1, idx, g_top - s_top.exp() * tail_scale[:, None])
    return rows.detach(), grad


def chunk_loss_and_grad(
    logits: torch.Tensor,
    teacher: torch.Tensor | CachedTeacher | None,
    labels: torch.Tensor,
    *,
    kind: str,
    temperature: float,
    beta: float,
    kd_weight: float | torch.Tensor,
    ce_weight: float | torch.Tensor,
    need_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss of a few tokens and its gradient w.r.t. their ``(R, V)`` logits.

    ``teacher``: the teacher's ``(R, V)`` logits for the same tokens, or their cached top-k rows.
    ``kd_weight`` / ``ce_weight``: one weight, or an ``(R,)`` float32 tensor of per-token weights.
    Returns the summed weighted loss, the KD and CE parts summed (unweighted) over the tokens whose
    weight for them is not 0, and the float32
    gradient of the summed weighted loss (``None`` without ``need_grad``). Values equal
    :func:`kd_loss`, :func:`topk_kd_loss` and :func:`ce_loss` summed; the gradient is their
    closed form.
    """
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    kd = ce = total = zero
    grad = None
    t = float(temperature)
    per_token = isinstance(kd_weight, torch.Tensor)  # both are tensors or neither
    use_kd = teacher is not None and bool(kd_weight.any() if per_token else kd_weight)
    use_ce = bool(ce_weight.any() if per_token else ce_weight)
    s = _log_softmax_at(logits, t) if use_kd or (use_ce and t == 1.0) else None
    q = s.exp() if s is not None else None
    if use_kd:
        if isinstance(teacher, CachedTeacher):
            rows, g = _topk_divergence_and_grad(s, q, teacher, kind, beta)
        else:
            rows, g = _divergence_and_grad(s, q, _log_softmax_at(teacher, t), kind, beta)
        if per_token:
            kd = (rows * (kd_weight > 0)).sum() * (t * t)
            total = (rows * kd_weight).sum() * (t * t)
        else:
            kd = rows.sum() * (t * t)
            total = kd_weight * kd
        # d(kd_weight * T^2 * L)/d(logits) = kd_weight * T * dL/dz
        grad = g.mul_(kd_weight[:, None] * t if per_token else kd_weight * t)
    if use_ce:
        if t == 1.0 and s is not None:
            logp, p = s, q
        else:
            logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            p = logp.exp() if need_grad else None
        labels = labels.long()
        nll = -logp.gather(-1, labels[:, None])[:, 0]
        ce = (nll * (ce_weight > 0)).sum() if per_token else nll.sum()
        total = total + ((nll * ce_weight).sum() if per_token else ce_weight * ce)
        if need_grad:
            g_ce = p * (ce_weight[:, None] if per_token else ce_weight)
            g_ce[torch.arange(len(labels), device=labels.device), labels] -= ce_weight
            grad = g_ce if grad is None else grad.add_(g_ce)
    if need_grad and grad is None:  # no term here (the loss is elsewhere, e.g. cross-tokenizer KD)
        grad = torch.zeros_like(logits, dtype=torch.float32)
    return total, kd, ce, grad if need_grad else None


# A chunk's (C, V) logits stay within this many elements (256 MiB in float32), whatever
# chunk_size says: 1024 tokens of a 49k vocabulary (unchanged), 256 of Gemma 3's 262k, where a
# 1024-token chunk would hold 1 GiB per logits-sized temporary (logits, teacher logits, gradient).
LOGIT_CHUNK_ELEMENTS = 1 << 26


def vocab_chunk(chunk_size: int, vocab: int) -> int:
    """Tokens per chunk for a ``vocab``-wide head: ``chunk_size``, capped by LOGIT_CHUNK_ELEMENTS."""
    return max(1, min(int(chunk_size), LOGIT_CHUNK_ELEMENTS // max(1, int(vocab))))


_CPU_BLOCK_ELEMENTS = 1 << 18  # 1 MiB of float32 per temporary: a few of them fit a CPU core's L2
_DEVICE_BLOCK_ELEMENTS = 1 << 25  # 128 MiB per temporary: large kernels, bounded memory


def _auto_row_block(logits: torch.Tensor) -> int:
    """Rows of logits per softmax block: cache-sized on CPU, large (memory-bounded) on accelerators."""
    budget = _CPU_BLOCK_ELEMENTS if logits.device.type == "cpu" else _DEVICE_BLOCK_ELEMENTS
    return max(1, budget // logits.shape[1])


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
            logits = F.linear(h, w, b)  # (C, V)
            live = teacher.logits(start, end) if isinstance(teacher, LiveTeacher) else None
            grad_logits = torch.empty_like(logits) if need_grad else None
            rows = opts["row_block"] or _auto_row_block(logits)
            # The softmax math walks the chunk a few rows at a time so its float32 temporaries stay
            # in cache (on CPU that is 3x faster than whole-chunk passes); matmuls use the chunk.
            for a in range(0, end - start, rows):
                z = slice(a, min(a + rows, end - start))
                if live is not None:
                    target = live[z]
                elif teacher is not None:
                    target = teacher.rows(start + z.start, start + z.stop)
                else:
                    target = None
                kd_w, ce_w = opts["kd_weight"], opts["ce_weight"]
                if isinstance(kd_w, torch.Tensor):  # per-token weights: this block's
                    kd_w, ce_w = (
                        kd_w[start + z.start : start + z.stop],
                        ce_w[start + z.start : start + z.stop],
                    )
                loss, kd, ce, g = chunk_loss_and_grad(
                    logits[z],
                    target,
                    labels[start:end][z],
                    kind=opts["kind"],
                    temperature=opts["temperature"],
                    beta=opts["beta"],
                    kd_weight=kd_w,
                    ce_weight=ce_w,
                    need_grad=need_grad,
                )
                total += loss
                kd_sum += kd
                ce_sum += ce
                if need_grad:
                    grad_logits[z] = g
            del logits, live
            if need_grad:  # grad_logits: (C, V) in compute_dtype
                grad_hidden[start:end] = (grad_logits @ w).float()
                if grad_weight is not None:
                    grad_weight += (grad_logits.t() @ h).float()
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
        scale = grad_out / ctx.normalizer_value
        grads = []
        for has, g, dtype in zip(ctx.has, ctx.saved_tensors, ctx.input_dtypes, strict=True):
            grads.append((g * scale).to(dtype) if has else None)
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
    kd_weight: float | torch.Tensor = 1.0,
    ce_weight: float | torch.Tensor = 0.0,
    head_bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    compute_dtype: torch.dtype = torch.float32,
    row_block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kd_weight * KD + ce_weight * CE).sum() / normalizer`` over the ``N`` scored tokens.

    ``hidden``: ``(N, H)`` student final hidden states (after the final norm) at the scored
    positions; ``head_weight``: ``(V, H)``; ``labels``: ``(N,)`` next-token ids (for CE);
    ``teacher``: the teacher's targets for the same ``N`` positions; ``kd_weight`` /
    ``ce_weight``: one weight each, or ``(N,)`` per-token weights (either both or neither).
    Returns the differentiable total and the detached KD and CE sums, unweighted, over the tokens
    that use them (each divided by ``normalizer``). Logit matmuls run in ``compute_dtype``; the softmax math runs in float32.
    """
    if isinstance(kd_weight, torch.Tensor) or isinstance(ce_weight, torch.Tensor):
        n = hidden.shape[0]
        kd_weight, ce_weight = (
            torch.as_tensor(w, dtype=torch.float32, device=hidden.device).expand(n).contiguous()
            for w in (kd_weight, ce_weight)
        )
    opts = {
        "kind": kind,
        "temperature": temperature,
        "beta": beta,
        "kd_weight": kd_weight,
        "ce_weight": ce_weight,
        "chunk_size": vocab_chunk(chunk_size, head_weight.shape[0]),
        "compute_dtype": compute_dtype,
        "row_block": max(1, int(row_block)) if row_block else None,
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
