"""One optimizer step's pieces: the data order, the learning-rate schedule and the step's loss
as one ``nn.Module`` (:class:`StudentLoss`, so DDP/FSDP see a single forward).

The loss of one optimizer step is

    (kd_weight * sum KD + ce_weight * sum CE + anchor_weight * sum anchor) / (scored tokens of
    the whole global batch)

(with ``gold_weight`` set, the tokens of gold rows count ``gold_weight * CE`` instead of their KD
and CE terms)  +  mean over the micro-batches of all processes of extra_loss

so gradient accumulation and data parallelism reproduce one big batch. ``extra_loss(output,
batch, step)`` gets the student's base-model output (``last_hidden_state``; a hook that needs
more, e.g. router logits, captures it with forward hooks), the batch and the optimizer step
being taken (0-based), and returns a per-micro-batch mean plus metrics to log.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from nexus.errors import NexusError
from nexus.trainer.anchoring import ActivationAnchoringLoss
from nexus.trainer.fused import fused_lm_head_loss
from nexus.trainer.settings import TrainSettings
from nexus.trainer.teacher import LayerCapture, TeacherTargets, base_model, model_inputs

# (model_output, batch, step) -> (per-micro-batch loss, {"name": value} metrics)
ExtraLossFn = Callable[[Any, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    module: nn.Module, settings: TrainSettings, *, fsdp: bool
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on biases and norms) and its warm-up + cosine schedule."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.95),
        # The fused kernel is ~5x faster than foreach on CPU; FSDP's sharded DTensor
        # parameters take the foreach path.
        **({"foreach": True} if fsdp else {"fused": True}),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup=settings.warmup_steps, total=settings.max_steps, min_ratio=settings.min_lr_ratio
        ),
    )
    return optimizer, scheduler


def global_batch_rows(step: int, global_batch: int, n_rows: int, seed: int) -> np.ndarray:
    """Row indices of optimizer step ``step``: a fresh seeded permutation each epoch."""
    start = step * global_batch
    out = np.empty(global_batch, dtype=np.int64)
    for j in range(global_batch):
        i = start + j
        epoch, pos = divmod(i, n_rows)
        out[j] = _epoch_perm(n_rows, seed, epoch)[pos]
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_perm(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    key = (n_rows, seed, epoch)
    if key not in _PERM_CACHE:
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        _PERM_CACHE[key] = torch.randperm(n_rows, generator=gen).numpy()
    return _PERM_CACHE[key]


class StudentLoss(nn.Module):
    """Student + trainable extras (anchoring projections); ``forward`` returns the step's loss."""

    def __init__(
        self,
        student: nn.Module,
        settings: TrainSettings,
        *,
        anchoring: ActivationAnchoringLoss | None = None,
        anchor_weight: float = 0.0,
        extra_loss: ExtraLossFn | None = None,
        compute_dtype: torch.dtype = torch.float32,
        world: int = 1,
    ):
        super().__init__()
        self.student = student
        # extra_loss is a per-micro-batch mean: the step's share is 1 / (micro-batches of the
        # global batch) = 1 / (grad_accum * world), like the global-sum normalizer of the KD terms
        self.world = world
        self.anchoring = anchoring
        self.settings = settings
        self.anchor_weight = anchor_weight
        self.step = 0  # the optimizer step being taken, for extra_loss (set by the trainer)
        self.extra_loss = extra_loss
        self.compute_dtype = compute_dtype
        use_anchor = anchoring is not None and anchor_weight > 0
        self.capture = LayerCapture(student, anchoring.student_layers) if use_anchor else None

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        teacher: TeacherTargets | None,
        normalizer: float,
        within: Callable[[nn.Module], Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's loss share of ``batch``; with ``within``, ``within(student)`` instead.

        ``within`` runs inside this module's forward, where FSDP has gathered the root
        parameters (embeddings, LM head, projections): evaluation of a sharded student.
        """
        if within is not None:
            return within(self.student)
        s = self.settings
        out = base_model(self.student)(**model_inputs(batch), use_cache=False)
        mask = batch["loss_mask"]
        hidden = out.last_hidden_state[mask]  # (N, H)
        head = self.student.get_output_embeddings()
        kd_weight = s.kd_weight if teacher is not None else 0.0
        ce_weight = s.ce_weight
        if s.gold_weight is not None and "gold_mask" in batch:
            # gold rows' tokens: CE on their own answer only; the others as configured
            gold = batch["gold_mask"][mask].to(hidden.device)
            kd_weight = torch.where(gold, 0.0, kd_weight)
            ce_weight = torch.where(gold, float(s.gold_weight), ce_weight)
        loss, kd, ce = fused_lm_head_loss(
            hidden,
            head.weight,
            batch["labels"][mask],
            teacher.target if teacher is not None else None,
            normalizer=normalizer,
            kind=s.kd_kind,
            temperature=s.temperature,
            beta=s.jsd_beta,
            kd_weight=kd_weight,
            ce_weight=ce_weight,
            head_bias=getattr(head, "bias", None),
            chunk_size=s.chunk_size,
            compute_dtype=self.compute_dtype,
        )
        metrics = {"kd": kd, "ce": ce}
        if self.capture is not None:
            student_states = {k: v[mask] for k, v in self.capture.pop().items()}
            if teacher is None or not teacher.states:
                raise NexusError(
                    "ActivationAnchoringLoss needs teacher hidden states (live teacher or a cache with states)"
                )
            anchor = self.anchoring(student_states, teacher.states, normalizer=normalizer)
            loss = loss + self.anchor_weight * anchor
            metrics["anchor"] = anchor.detach()
        if self.extra_loss is not None:
            extra, extra_metrics = self.extra_loss(out, batch, self.step)
            micro_batches = s.grad_accum * self.world
            loss = loss + extra / micro_batches
            metrics["extra"] = extra.detach() / micro_batches
            for k, v in extra_metrics.items():
                metrics[k] = torch.as_tensor(float(v)) / micro_batches
        return loss, metrics
