"""Stage 1 of the default VLM teacher's build (vision pre-training) on a tiny tower."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from tiny_vlm import build_vlm

from nexus.multimodal.default_teacher import TeacherRecipe, _ReadOut, pretrain_vision
from nexus.multimodal.synthetic import _VALUES as VALUES
from nexus.multimodal.synthetic import CAPABILITIES, synthetic_examples


def test_vision_pretraining_trains_flat_and_pooled_readouts(tiny_tokenizer):
    model, processor = build_vlm(tiny_tokenizer, image_size=32, patch_size=8)
    vision = model.model.vision_tower
    before = copy.deepcopy(vision.state_dict())
    rows = synthetic_examples("train", 10, size=32)
    readout = _ReadOut(vision, n_patches=16, hidden=32)
    pixels = processor.image_processor(images=[r.images[0] for r in rows], return_tensors="pt")[
        "pixel_values"
    ]
    heads = readout(pixels, rows)
    shown = sum(any(c in r.attributes for r in rows) for c in CAPABILITIES)
    assert len(heads) == 2 * shown  # a flattened and a pooled read-out of every capability shown
    for logits, targets in heads:
        assert logits.shape[0] == len(targets)

    recipe = replace(
        TeacherRecipe(), image_size=32, patch_size=8, vision_hidden=32, vision_steps=40, vision_batch=20
    )
    torch.manual_seed(0)
    accuracy = pretrain_vision(vision, processor, recipe)
    assert set(accuracy) == set(CAPABILITIES)
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert accuracy["colour"] > 2 / len(VALUES["colour"])  # learnt, not chance
    changed = [k for k, v in vision.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the tower itself was trained, not only the heads
