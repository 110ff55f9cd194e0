"""``ActivationAnchoringLoss``: the student's hidden states pulled toward the teacher's at
critical layer pairs (phase 2's second loss, next to logit KD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nexus.errors import NexusError


def check_anchor_pairs(pairs: Sequence[Sequence[int]], n_student: int, n_teacher: int) -> None:
    """Every ``[student_layer, teacher_layer]`` pair indexes both stacks (a NexusError if not)."""
    for s_layer, t_layer in pairs:
        if not (0 <= s_layer < n_student and 0 <= t_layer < n_teacher):
            raise NexusError(
                f"anchor pair [{s_layer}, {t_layer}] is out of range (student 0..{n_student - 1}, teacher 0..{n_teacher - 1})"
            )


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
