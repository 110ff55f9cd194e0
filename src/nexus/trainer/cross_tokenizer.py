"""Cross-tokenizer distillation: a teacher and a student whose tokenizers differ.

Plain KD compares two distributions over one vocabulary; here the teacher reads its own
tokenisation of the text the student reads, and one of two losses ties them:

* ``uld`` -- Universal Logit Distillation (Boizard et al., 2024, arXiv:2402.12030): the scored
  student positions and the teacher positions over the same text are paired in order (trimmed to
  the shorter), each pair's probability vectors are sorted in decreasing order, the shorter
  vocabulary is padded with zeros, and the loss is their L1 distance (the closed form of the
  Wasserstein-1 distance between sorted vectors). No token correspondence is needed.
* ``align`` -- token alignment by character offsets (as in TRL's GOLD trainer and NeMo RL's
  token aligner): both token sequences are laid on the same decoded text; a student position
  and a teacher position are aligned when both have read exactly the same characters (their
  token boundaries coincide there), so both predict the continuation of the same prefix. At
  aligned positions the loss is KL(teacher || student) over the *shared vocabulary* -- the tokens
  whose decoded strings are identical on both sides, mapped by an index map -- each distribution
  renormalised over it.

Character offsets come from incremental decoding (``len(decode(ids[:k+1]))``) on both sides,
which works for byte-level BPE and SentencePiece alike; a token that ends inside a multi-byte
character gets an offset that rarely coincides with the other side's, so it is simply not aligned.

The loss runs as the engine's ``extra_loss`` hook (:class:`CrossTokenizerKD` is callable as one):
the student's hidden states at the scored positions come from the step's forward; the teacher
runs (no grad) on its own token ids, built per batch from the student row's decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nexus.errors import NexusError
from nexus.trainer.teacher import base_model

METHODS = ("uld", "align")


def char_ends(tokenizer, ids: list[int]) -> list[int]:
    """End character offset of each token of ``ids`` in ``tokenizer.decode(ids)``."""
    ends: list[int] = []
    last = 0
    for k in range(len(ids)):
        n = len(tokenizer.decode(ids[: k + 1], clean_up_tokenization_spaces=False))
        last = max(last, n)
        ends.append(last)
    return ends


def aligned_pairs(s_ends: list[int], t_ends: list[int]) -> list[tuple[int, int]]:
    """``(i, j)`` with ``s_ends[i] == t_ends[j]``: student position ``i`` and teacher position ``j``
    have read the same characters. Offsets are non-decreasing; on equal offsets (tokens that
    decode to nothing) the last position of each side is kept."""
    last_s = {e: i for i, e in enumerate(s_ends) if e > 0}
    last_t = {e: j for j, e in enumerate(t_ends) if e > 0}
    return sorted((last_s[e], last_t[e]) for e in last_s.keys() & last_t.keys())


def shared_vocab(student_tok, teacher_tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Index map of the shared vocabulary: ``(student_ids, teacher_ids)`` of tokens whose decoded
    strings are identical (special tokens and pieces that are not whole characters left out)."""

    def pieces(tok) -> dict[str, int]:
        special = set(tok.all_special_ids)
        out: dict[str, int] = {}
        for i in range(len(tok)):
            if i in special:
                continue
            text = tok.decode([i], clean_up_tokenization_spaces=False)
            if text and "\ufffd" not in text and text not in out:
                out[text] = i
        return out

    s, t = pieces(student_tok), pieces(teacher_tok)
    common = sorted(s.keys() & t.keys())
    if not common:
        raise NexusError(
            "the teacher's and the student's tokenizers share no token: use --cross-tokenizer uld"
        )
    return torch.tensor([s[c] for c in common]), torch.tensor([t[c] for c in common])


def uld_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Sum over the N paired positions of the L1 distance between the sorted probability vectors
    (``(N, Vs)`` and ``(N, Vt)`` logits; the shorter vocabulary padded with zeros).

    Past the shorter vocabulary's size ``k`` the longer vector meets zeros, so those entries add
    their mass, ``1 - (its top-k sum)``: only the top ``k`` of each side are sorted (for Gemma 3's
    262k tokens against a 49k student, a top-49k instead of a full sort, a fifth of the memory)."""
    k = min(student_logits.shape[-1], teacher_logits.shape[-1])
    total = student_logits.new_zeros((), dtype=torch.float32)
    tops = []
    for logits in (student_logits, teacher_logits):
        p = F.softmax(logits.float() / temperature, dim=-1)
        top = (
            p.topk(k, dim=-1, sorted=True).values
            if p.shape[-1] > k
            else p.sort(dim=-1, descending=True).values
        )
        if p.shape[-1] > k:
            total = total + (1.0 - top.sum(-1)).clamp_min(0.0).sum()
        tops.append(top)
    return total + (tops[0] - tops[1]).abs().sum()


def shared_vocab_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Sum over the N aligned positions of KL(teacher || student), both renormalised over the
    shared vocabulary (``student_ids[k]`` and ``teacher_ids[k]`` are the same string)."""
    log_s = F.log_softmax(student_logits.float()[:, student_ids] / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float()[:, teacher_ids] / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum()


@dataclass
class RowPlan:
    """Which positions of one row the loss compares: student positions (in the row) and teacher
    positions (in the teacher's tokenisation ``teacher_ids``), pairwise."""

    teacher_ids: list[int]
    student_pos: list[int]
    teacher_pos: list[int]


def plan_row(
    method: str, student_tok, teacher_tok, ids: list[int], scored: list[bool], max_teacher_len: int
) -> RowPlan:
    """The teacher's tokenisation of a student row and the positions compared by ``method``."""
    text = student_tok.decode(ids, clean_up_tokenization_spaces=False)
    t_ids = teacher_tok.encode(text, add_special_tokens=False)[:max_teacher_len]
    s_ends, t_ends = char_ends(student_tok, ids), char_ends(teacher_tok, t_ids)
    scored_pos = [i for i, m in enumerate(scored) if m]
    if not scored_pos or not t_ids:
        return RowPlan(t_ids, [], [])
    if method == "align":
        pairs = [(i, j) for i, j in aligned_pairs(s_ends, t_ends) if scored[i]]
        return RowPlan(t_ids, [i for i, _ in pairs], [j for _, j in pairs])
    # uld: teacher positions predicting a token inside the scored text, paired in order
    first, last = scored_pos[0], scored_pos[-1]
    lo = s_ends[first]
    hi = s_ends[last + 1] if last + 1 < len(s_ends) else s_ends[-1]
    t_pos = [j for j, e in enumerate(t_ends) if lo <= e < hi]
    n = min(len(scored_pos), len(t_pos))
    return RowPlan(t_ids, scored_pos[:n], t_pos[:n])


class CrossTokenizerKD:
    """The cross-tokenizer KD term as an ``extra_loss(output, batch, step)`` hook.

    Returns ``kd_weight * (sum of the per-position losses) / (compared positions)`` for the
    micro-batch (0 when no position is compared) and logs ``xkd`` and ``xkd_positions``.
    """

    def __init__(
        self,
        method: str,
        *,
        student: nn.Module,
        teacher: nn.Module,
        student_tokenizer,
        teacher_tokenizer,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        teacher_dtype: torch.dtype | None = None,
    ):
        if method not in METHODS:
            raise NexusError(f"unknown cross-tokenizer method {method!r} (choose from {', '.join(METHODS)})")
        self.method = method
        self.student = student
        self.teacher = teacher.eval()
        if teacher_dtype is not None:
            self.teacher.to(teacher_dtype)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.s_tok, self.t_tok = student_tokenizer, teacher_tokenizer
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.max_teacher_len = getattr(teacher.config, "max_position_embeddings", None) or 1 << 30
        self.vocab_map = shared_vocab(student_tokenizer, teacher_tokenizer) if method == "align" else None

    def plans(self, batch: dict[str, torch.Tensor]) -> list[RowPlan]:
        ids = batch["input_ids"].tolist()
        masks = batch["loss_mask"].tolist()
        return [
            plan_row(self.method, self.s_tok, self.t_tok, row, mask, self.max_teacher_len)
            for row, mask in zip(ids, masks, strict=True)
        ]

    @torch.no_grad()
    def teacher_logits(self, plans: list[RowPlan], device: torch.device) -> torch.Tensor:
        """Teacher logits at the planned teacher positions of every row, concatenated."""
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        rows = [p for p in plans if p.teacher_pos]
        width = max(len(p.teacher_ids) for p in rows)
        pad = self.t_tok.pad_token_id if self.t_tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        attn = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for r, p in enumerate(rows):
            ids[r, : len(p.teacher_ids)] = torch.tensor(p.teacher_ids, device=device)
            attn[r, : len(p.teacher_ids)] = 1
        hidden = base_model(self.teacher)(
            input_ids=ids, attention_mask=attn, use_cache=False
        ).last_hidden_state
        picked = torch.cat([hidden[r, p.teacher_pos] for r, p in enumerate(rows)])
        return self.teacher.get_output_embeddings()(picked).float()

    def __call__(self, output: Any, batch: dict[str, torch.Tensor], step: int):
        plans = self.plans(batch)
        hidden = output.last_hidden_state
        n = sum(len(p.student_pos) for p in plans)
        if n == 0:
            zero = hidden.sum() * 0.0
            return zero, {"xkd": 0.0, "xkd_positions": 0.0}
        picked = torch.cat([hidden[r, p.student_pos] for r, p in enumerate(plans) if p.student_pos])
        s_logits = self.student.get_output_embeddings()(picked)
        t_logits = self.teacher_logits(plans, hidden.device)
        if self.method == "uld":
            total = uld_loss(s_logits, t_logits, self.temperature)
        else:
            s_ids, t_ids = (x.to(hidden.device) for x in self.vocab_map)
            total = shared_vocab_kl(s_logits, t_logits, s_ids, t_ids, self.temperature)
        mean = total / n
        return self.kd_weight * mean, {"xkd": float(mean.detach()), "xkd_positions": float(n)}
