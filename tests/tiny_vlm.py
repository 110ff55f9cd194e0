"""A tiny random LLaVA (SigLIP tower + Llama language tower) over the tests' tiny tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path

import tiny
import torch


def build_vlm(tokenizer, *, num_layers: int = 4, image_size: int = 16, patch_size: int = 8, seed: int = 0):
    """``(model, processor)``: a random ``LlavaForConditionalGeneration`` and its processor."""
    from transformers import SiglipVisionConfig

    from nexus.multimodal.vlm import build_llava, build_processor

    tokenizer = copy.deepcopy(tokenizer)
    processor = build_processor(tokenizer, image_size=image_size, patch_size=patch_size)
    language_model = tiny.build_model("llama", tokenizer, num_layers=num_layers, seed=seed)
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    return build_llava(language_model, processor, vision), processor


def save_vlm(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
