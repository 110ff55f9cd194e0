"""Fidelity of a student to its teacher, from the same divergence functions as the loss
(:mod:`nexus.trainer.divergence`):

* :func:`evaluate_fidelity` -- held-out rows through the student and a teacher source: mean
  per-token KL(teacher || student) (``kd``, or ``kd_topk`` on a cached teacher's K + 1 bins), CE
  on the data and top-1 agreement; :func:`heldout_kd` reads that KL back from a summary;
* :func:`fidelity_metrics` -- the same KL and agreement from two logit tensors (the benchmark's
  teacher-vs-student figures).

Every figure is float32 and chunked, so ``B x T x V`` probabilities are never held twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nexus.data.packing import PackedRows
from nexus.hardware import autocast
from nexus.trainer.divergence import forward_kl_terms, top1_matches, topk_bins
from nexus.trainer.fused import vocab_chunk
from nexus.trainer.teacher import LiveTeacherSource, TeacherTargets, base_model, model_inputs


@torch.no_grad()
def score_batch(
    student: nn.Module,
    batch: dict[str, torch.Tensor],
    targets: TeacherTargets | None,
    *,
    cached: bool,
    precision: str,
    device: torch.device,
    chunk_size: int,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Summed KL(teacher || student), CE and top-1 agreements of one batch, and its token counts.

    ``temperature``: that of a cached teacher's log-probs; the student is compared at the same one
    (1 for a live teacher and for the held-out split of a cache). Tokens of gold rows
    (``gold_mask``: trained on their own answer, not the teacher's) count for CE only
    (``kd_tokens`` are the others)."""
    head = student.get_output_embeddings()
    chunk_size = vocab_chunk(chunk_size, head.weight.shape[0])  # bounded (C, V) temporaries
    with autocast(precision, device):
        out = base_model(student)(**model_inputs(batch), use_cache=False)
    mask = batch["loss_mask"]
    hidden = out.last_hidden_state[mask]
    labels = batch["labels"][mask]
    teacher_side = ~batch["gold_mask"][mask] if "gold_mask" in batch else None
    sums = {"kl": 0.0, "ce": 0.0, "agree": 0.0, "tokens": int(hidden.shape[0])}
    sums["kd_tokens"] = sums["tokens"] if teacher_side is None else int(teacher_side.sum())
    for c in range(0, hidden.shape[0], chunk_size):
        e = min(hidden.shape[0], c + chunk_size)
        logits = F.linear(hidden[c:e].to(head.weight.dtype), head.weight, getattr(head, "bias", None)).float()
        logp = F.log_softmax(logits, -1)
        sums["ce"] += float(F.nll_loss(logp, labels[c:e], reduction="sum"))
        if targets is None:
            continue
        keep = slice(None) if teacher_side is None else teacher_side[c:e]
        if cached:
            t = targets.target
            s_at = logp if temperature == 1.0 else F.log_softmax(logits / temperature, -1)
            s_logp, t_logp = topk_bins(s_at, t.topk_logp[c:e], t.topk_idx[c:e], t.tail_logp[c:e])
            sums["kl"] += float(forward_kl_terms(t_logp, s_logp)[keep].sum())
            teacher_top1 = t.topk_idx[c:e, 0].long()
        else:
            t_logits = targets.target.logits(c, e).float()
            sums["kl"] += float(forward_kl_terms(F.log_softmax(t_logits, -1), logp)[keep].sum())
            teacher_top1 = t_logits.argmax(-1)
        sums["agree"] += float(top1_matches(logits[keep], teacher_top1[keep]))
    return sums


@torch.no_grad()
def evaluate_fidelity(
    student: nn.Module,
    teacher: LiveTeacherSource | Any | None,
    rows: PackedRows,
    *,
    max_rows: int | None = None,
    batch_size: int = 4,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    chunk_size: int = 1024,
    scorer: Callable[..., dict[str, float]] | None = None,
) -> dict[str, float]:
    """Mean per-token KL(teacher || student) at T=1, CE on the data and top-1 agreement (KL and
    agreement over the tokens whose target is the teacher: not those of gold rows, ``kd_tokens``).

    With a cached teacher the KL is the top-k (K + 1 bins) one and is reported as
    ``kd_topk``; with a live teacher it is the full-vocabulary KL (``kd``). A cache's held-out
    split holds the teacher at T=1 (:mod:`nexus.trainer.cache`), so ``kd_topk`` is the live ``kd``
    coarsened to the teacher's top-k bins (equal to it as k reaches the vocabulary). A cached
    source at another temperature ``T`` (a train split, an older cache) is compared with the
    student at ``T`` and reported as ``kd_topk_T<T>`` instead. ``scorer`` replaces
    :func:`score_batch` (same keyword arguments), e.g. to run it inside an FSDP root.
    """
    device = torch.device(device)
    was_training = student.training
    student.eval()
    n = len(rows) if max_rows is None else min(len(rows), max_rows)
    sums = {"kl": 0.0, "ce": 0.0, "agree": 0.0, "tokens": 0, "kd_tokens": 0}
    cached = teacher is not None and not isinstance(teacher, LiveTeacherSource)
    temperature = float(getattr(teacher, "temperature", 1.0)) if cached else 1.0
    extra = {"temperature": temperature} if temperature != 1.0 else {}
    score = scorer or functools.partial(score_batch, student)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        batch = {k: v.to(device) for k, v in rows.batch(idx).items()}
        with autocast(precision, device):
            targets = teacher(batch, idx) if teacher is not None else None
        part = score(
            batch, targets, cached=cached, precision=precision, device=device, chunk_size=chunk_size, **extra
        )
        for key in sums:
            sums[key] += part[key]
    student.train(was_training)
    tokens, kd_tokens = max(1, sums["tokens"]), max(1, sums["kd_tokens"])
    result = {"ce": sums["ce"] / tokens, "tokens": sums["tokens"]}
    if teacher is not None:
        key = ("kd_topk" if temperature == 1.0 else f"kd_topk_T{temperature:g}") if cached else "kd"
        result[key] = sums["kl"] / kd_tokens
        result["top1_agreement"] = sums["agree"] / kd_tokens
        if sums["kd_tokens"] != sums["tokens"]:  # gold rows: scored by CE only
            result["kd_tokens"] = sums["kd_tokens"]
    return result


def heldout_kd(eval_metrics: dict[str, Any] | None) -> float | None:
    """The held-out KL of an :func:`evaluate_fidelity` result (``kd`` or ``kd_topk``), or None."""
    ev = eval_metrics or {}
    return ev.get("kd", ev.get("kd_topk"))


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
        kl_sum += float(forward_kl_terms(log_pt, log_ps).sum())
        agree += int(top1_matches(sc, tc.argmax(-1)))
    return Fidelity(kl_sum / n, agree / n, n)
