"""Teacher sources: the teacher's targets at the scored positions of a batch.

One small protocol, :class:`TeacherSource` -- ``source(batch, rows) -> TeacherTargets`` -- with
three cases the engine knows:

* live: :class:`LiveTeacherSource` runs the teacher on each batch (no grad);
* cached: :class:`nexus.trainer.cache.CachedTeacherSource` reads top-k log-probs (and anchor
  states) from the memory-mapped cache built once;
* none: ``None`` (CE only, e.g. phase 3 with ``kd_weight: 0``).

A source may also have ``heldout()`` (the source for the held-out split, used by evaluation) and
``place(device, mesh=..., par=...)`` (moving or sharding a live teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from nexus.errors import NexusError
from nexus.models import decoder_layers
from nexus.trainer import parallel
from nexus.trainer.fused import CachedTeacher, LiveTeacher


@dataclass
class TeacherTargets:
    target: LiveTeacher | CachedTeacher  # for the N scored positions, row-major
    states: dict[int, torch.Tensor]  # teacher layer -> (N, Ht) hidden states at the scored positions


class LayerCapture:
    """Forward hooks storing the outputs of chosen decoder layers (``layer -> (B, T, H)``)."""

    def __init__(self, model: nn.Module, layers: list[int]):
        self.states: dict[int, torch.Tensor] = {}
        blocks = decoder_layers(model)
        for layer in layers:
            if not 0 <= layer < len(blocks):
                raise NexusError(
                    f"anchoring layer {layer} is out of range: the model has layers 0..{len(blocks) - 1}"
                )
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            self.states[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def pop(self) -> dict[int, torch.Tensor]:
        states, self.states = self.states, {}
        return states

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def base_model(model: nn.Module) -> nn.Module:
    """The decoder under the LM head (``model.model`` for Llama): its output is the hidden states."""
    return getattr(model, model.base_model_prefix)


# Forward inputs a batch may carry: packed text rows have the first two; image-text rows
# (nexus.multimodal.rows.VisionRows) add the processor's outputs. Anything else in a batch
# (labels, loss_mask, domain_ids, ...) is a target or bookkeeping, never a model input.
MODEL_INPUT_KEYS = (
    "input_ids",
    "position_ids",
    "attention_mask",
    "pixel_values",
    "pixel_attention_mask",
    "image_sizes",
    "image_grid_thw",
    "token_type_ids",
    "mm_token_type_ids",
)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward's inputs of a batch (see :data:`MODEL_INPUT_KEYS`), so one engine serves text
    and vision-language students."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


class TeacherSource(Protocol):
    """``(batch, rows) -> TeacherTargets`` for the ``loss_mask`` positions of ``batch``
    (``rows``: the batch's row indices in its split, for sources that read by row)."""

    def __call__(self, batch: dict[str, torch.Tensor], rows: np.ndarray) -> TeacherTargets: ...


class LiveTeacherSource:
    """Runs the teacher on each batch (no grad) in ``dtype``; keeps only what the loss needs."""

    def __init__(
        self, model: nn.Module, *, layers: list[int] | None = None, dtype: torch.dtype | None = None
    ):
        self.model = model.eval()
        if dtype is not None:
            self.model.to(dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = sorted(set(layers or []))
        self.capture = LayerCapture(model, self.layers) if self.layers else None
        self._read_head()

    def _read_head(self) -> None:
        head = self.model.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)

    def place(self, device: torch.device, *, mesh=None, par: parallel.Parallelism | None = None) -> None:
        """Move the teacher to ``device`` whole, or shard it over ``mesh`` with FSDP (forward only)."""
        if mesh is None:
            self.model.to(device)
        else:
            parallel.shard_teacher(
                self.model, decoder_layers(self.model), mesh, par or parallel.Parallelism(), device=device
            )
        self._read_head()

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], rows: np.ndarray) -> TeacherTargets:
        out = base_model(self.model)(**model_inputs(batch), use_cache=False)
        mask = batch["loss_mask"]
        states = {k: v[mask] for k, v in self.capture.pop().items()} if self.capture else {}
        return TeacherTargets(
            LiveTeacher(out.last_hidden_state[mask], self.head_weight, self.head_bias), states
        )
