"""Image-text rows in the shape the Nexus trainer reads (:class:`VisionRows`).

The text phases train on :class:`~nexus.data.packing.PackedRows`; a vision-language student
trains on the same engine (:class:`~nexus.trainer.loop.Trainer`: KD + CE + anchoring, resume,
status line) from these rows instead. They are not packed: a row is one example, right-padded,
with its pictures; ``batch(rows)`` adds ``attention_mask`` and whatever else the processor gave
each row (``pixel_values``; Qwen2-VL's ``image_grid_thw`` and ``mm_token_type_ids``, Idefics3's
``pixel_attention_mask``, Gemma 3's ``token_type_ids``, ...), joined per :func:`collate_inputs`, to
the packed rows' keys, and the engine hands every model input of a batch to the forward
(:func:`nexus.trainer.teacher.model_inputs`). A batch carries no ``position_ids``: a row is one
example, so the model's own positions are right, and a family with its own position scheme
(Qwen2-VL's 3-D rotary positions) computes it from the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nexus.data.packing import IGNORE_INDEX, PackedRows
from nexus.errors import NexusError
from nexus.multimodal.synthetic import VisionExample


def collate_inputs(
    parts: Sequence[dict[str, torch.Tensor]], lengths: Sequence[int], width: int
) -> dict[str, torch.Tensor]:
    """The processor outputs of single rows (``parts[i]``, row ``i`` ``lengths[i]`` tokens long)
    as one batch of rows right-padded to ``width``, driven by the tensors' shapes, not by the
    family: a per-token tensor (``(1, lengths[i])``: ``token_type_ids``, ``mm_token_type_ids``)
    is padded with zeros to ``(1, width)``; anything else (per picture: ``pixel_values``,
    ``image_grid_thw``; per row: Idefics3's ``(1, n_images, ...)`` pixels and pixel mask) is
    concatenated along its first dimension, its other dimensions zero-padded to the largest
    (rows with fewer pictures; an all-zero picture is padding to Idefics3)."""
    keys = dict.fromkeys(k for p in parts for k in p)
    out = {}
    for key in keys:
        values = []
        for part, length in zip(parts, lengths, strict=True):
            value = part.get(key)
            if value is None:
                continue
            if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length:
                value = torch.nn.functional.pad(value, (0, 0) * (value.dim() - 2) + (0, width - length))
            values.append(value)
        shape = [max(v.shape[d] for v in values) for d in range(values[0].dim())]
        padded = []
        for v in values:
            pad = [x for d in reversed(range(1, v.dim())) for x in (0, shape[d] - v.shape[d])]
            padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
        out[key] = torch.cat(padded)
    return out


@dataclass
class VisionRows(PackedRows):
    """Tokenized image-text rows: the packed rows' ``input_ids``, ``position_ids`` and ``labels``
    ``(R, L)`` plus ``attention_mask`` (right padding), each row's other processor outputs
    (``inputs[r]``: its pictures and what goes with them, see :func:`collate_inputs`) and the
    examples. With ``domains`` (the router phase's: the rows' capabilities), ``domain_ids`` (R,)
    indexes each row's capability in it and batches carry it like
    :class:`~nexus.data.domains.DomainRows`."""

    attention_mask: np.ndarray
    inputs: list[dict[str, torch.Tensor]]
    examples: list[VisionExample]
    domains: tuple[str, ...] = ()
    domain_ids: np.ndarray | None = None

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.asarray(rows, dtype=np.int64)
        out = super().batch(idx)
        del out["position_ids"]  # see the module docstring
        attention_mask = self.attention_mask[idx]
        out["attention_mask"] = torch.from_numpy(attention_mask).long()
        lengths = [int(self.attention_mask[i].sum()) for i in idx]
        out.update(collate_inputs([self.inputs[i] for i in idx], lengths, attention_mask.shape[1]))
        if self.domain_ids is not None:
            out["domain_ids"] = torch.from_numpy(self.domain_ids[idx])
        return out


def encode_rows(
    processor, examples: Sequence[VisionExample], domains: Sequence[str] | None = None
) -> VisionRows:
    """Tokenize ``examples`` (prompt + response, response tokens scored) into :class:`VisionRows`,
    all right-padded to the longest row (never cut: that could cut a picture's tokens); with
    ``domains``, each row's capability as a domain id (-1 for one not in ``domains``)."""
    from nexus.multimodal.vlm import TEXT_KEYS, encode

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
    inputs = [{k: v for k, v in p.items() if k not in TEXT_KEYS} for p in parts]
    if domains is None:
        return VisionRows(ids, positions, labels, attn, inputs, list(examples))
    index = {d: i for i, d in enumerate(domains)}
    domain_ids = np.array([index.get(e.capability, -1) for e in examples], dtype=np.int64)
    return VisionRows(ids, positions, labels, attn, inputs, list(examples), tuple(domains), domain_ids)
