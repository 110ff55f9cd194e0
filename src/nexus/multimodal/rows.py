"""Image-text rows in the shape the Nexus trainer reads (:class:`VisionRows`).

The text phases train on :class:`~nexus.data.packing.PackedRows`; a vision-language student
trains on the same engine (:class:`~nexus.trainer.loop.Trainer`: KD + CE + anchoring, resume,
status line) from these rows instead. They are not packed: a row is one example, right-padded,
with its pictures; ``batch(rows)`` adds ``attention_mask`` and ``pixel_values`` (every row's
images, in row order, as the processor lays them out) to the packed rows' keys, and the engine
hands every model input of a batch to the forward (:func:`nexus.trainer.teacher.model_inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nexus.data.packing import IGNORE_INDEX, PackedRows
from nexus.errors import NexusError
from nexus.multimodal.synthetic import VisionExample


@dataclass
class VisionRows(PackedRows):
    """Tokenized image-text rows: the packed rows' ``input_ids``, ``position_ids`` and ``labels``
    ``(R, L)`` plus ``attention_mask`` (right padding), the pixels of each row's images
    (``pixels[r]``: ``(n_images, C, H, W)``) and the examples. With ``domains`` (the router
    phase's: the rows' capabilities), ``domain_ids`` (R,) indexes each row's capability in it and
    batches carry it like :class:`~nexus.data.domains.DomainRows`."""

    attention_mask: np.ndarray
    pixels: list[torch.Tensor]
    examples: list[VisionExample]
    domains: tuple[str, ...] = ()
    domain_ids: np.ndarray | None = None

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.asarray(rows, dtype=np.int64)
        out = super().batch(idx)
        out["attention_mask"] = torch.from_numpy(self.attention_mask[idx]).long()
        out["pixel_values"] = torch.cat([self.pixels[i] for i in idx])
        if self.domain_ids is not None:
            out["domain_ids"] = torch.from_numpy(self.domain_ids[idx])
        return out


def encode_rows(
    processor, examples: Sequence[VisionExample], domains: Sequence[str] | None = None
) -> VisionRows:
    """Tokenize ``examples`` (prompt + response, response tokens scored) into :class:`VisionRows`,
    all right-padded to the longest row (never cut: that could cut a picture's tokens); with
    ``domains``, each row's capability as a domain id (-1 for one not in ``domains``)."""
    from nexus.multimodal.vlm import encode

    if not examples:
        raise NexusError("no image-text rows to encode")
    parts = [encode(processor, [e]) for e in examples]
    width = max(p["input_ids"].shape[1] for p in parts)
    pad = processor.tokenizer.pad_token_id or 0
    n = len(parts)
    ids = np.full((n, width), pad, dtype=np.int64)
    attn = np.zeros((n, width), dtype=np.int64)
    labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
    for i, p in enumerate(parts):
        length = p["input_ids"].shape[1]
        ids[i, :length] = p["input_ids"][0].numpy()
        attn[i, :length] = p["attention_mask"][0].numpy()
        labels[i, :length] = p["labels"][0].numpy()
    positions = np.maximum(np.cumsum(attn, axis=1) - 1, 0)  # padding repeats the last position
    pixels = [p["pixel_values"] for p in parts]
    if domains is None:
        return VisionRows(ids, positions, labels, attn, pixels, list(examples))
    index = {d: i for i, d in enumerate(domains)}
    domain_ids = np.array([index.get(e.capability, -1) for e in examples], dtype=np.int64)
    return VisionRows(ids, positions, labels, attn, pixels, list(examples), tuple(domains), domain_ids)
