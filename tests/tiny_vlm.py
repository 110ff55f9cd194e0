"""Tiny random vision-language models over the tests' tiny tokenizer, one per family Nexus
supports: LLaVA (SigLIP tower + Llama language tower), Idefics3 (SmolVLM's class), Gemma 3 and
Qwen2-VL, each with its own transformers processor built from parts (no download).

Sizes follow transformers' own tests (tests/models/<family>/test_modeling_*.py), smaller: a
16x16 picture becomes 4 image tokens, the vision towers have 2 layers of width 32, the language
towers 4-6 layers of width 64."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import tiny
import torch

# A ChatML template like the default teacher's (vlm.CHAT_TEMPLATE) with a family's own picture
# marker, which its processor expands into the picture's tokens.
_CHATML = (
    "{{% for message in messages %}}<|im_start|>{{{{ message['role'] }}}}\n"
    "{{% if message['content'] is string %}}{{{{ message['content'] }}}}{{% else %}}"
    "{{% for item in message['content'] %}}{{% if item['type'] == 'image' %}}{image}"
    "{{% elif item['type'] == 'text' %}}{{{{ item['text'] }}}}{{% endif %}}{{% endfor %}}{{% endif %}}"
    "<|im_end|>\n{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}"
)
# Gemma's turns (user / model, <end_of_turn>); a picture is <start_of_image>.
GEMMA_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' "
    "else message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2
_HALF = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # scale pixels to [-1, 1]


def _vision(**extra):
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        **extra,
    }


def _language(tokenizer, num_layers: int, seed: int):
    """A random Llama language tower (a ``LlamaForCausalLM``) over ``tokenizer``'s vocabulary."""
    return tiny.build_model("llama", tokenizer, num_layers=num_layers, seed=seed)


def build_vlm(tokenizer, *, num_layers: int = 4, image_size: int = 16, patch_size: int = 8, seed: int = 0):
    """``(model, processor)``: a random ``LlavaForConditionalGeneration`` and its processor."""
    from transformers import SiglipVisionConfig

    from nexus.multimodal.vlm import build_llava, build_processor

    tokenizer = copy.deepcopy(tokenizer)
    processor = build_processor(tokenizer, image_size=image_size, patch_size=patch_size)
    language_model = _language(tokenizer, num_layers, seed)
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(**_vision(image_size=image_size, patch_size=patch_size))
    return build_llava(language_model, processor, vision), processor


def build_idefics3(tokenizer, *, num_layers: int = 4, image_size: int = 16, seed: int = 0):
    """``(Idefics3ForConditionalGeneration, Idefics3Processor)``: a 4x4-patch picture, pixel
    shuffle by 2 -> 4 ``<image>`` tokens; no image splitting; a Llama language tower."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = copy.deepcopy(tokenizer)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
        **_HALF,
    )
    patch, scale = image_size // 4, 2
    processor = Idefics3Processor(  # adds <image>, <fake_token_around_image>, <end_of_utterance>
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch) ** 2 // scale**2,
        chat_template=_CHATML.format(image="<image>"),
    )
    language_model = _language(tokenizer, num_layers, seed)
    config = Idefics3Config(
        vision_config=_vision(image_size=image_size, patch_size=patch),
        text_config=language_model.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.model.text_model.load_state_dict(language_model.model.state_dict())
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def _gemma_tokenizer(tokenizer):
    """``tokenizer`` with Gemma 3's picture tokens as named special tokens (``boi_token``,
    ``eoi_token``, ``image_token``: what ``Gemma3Processor`` reads) and its turn markers."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        named = {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
        out = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=named)
    out.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return out


def build_gemma3(tokenizer, *, num_layers: int = 6, image_size: int = 16, seed: int = 0):
    """``(Gemma3ForConditionalGeneration, Gemma3Processor)``: a SigLIP tower on 4x4 patches
    pooled to 4 image tokens; a Gemma 3 language tower with sliding-window (4 tokens) and full
    attention layers (:data:`GEMMA_LAYER_TYPES`)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = _gemma_tokenizer(tokenizer)
    tokens_per_image = 4
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, **_HALF),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=GEMMA_TEMPLATE,
    )
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        layer_types=GEMMA_LAYER_TYPES[:num_layers],
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=_vision(
            model_type="siglip_vision_model", image_size=image_size, patch_size=image_size // 4
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).float()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


QWEN2_VL_TEMPLATE = _CHATML.format(image="<|vision_start|><|image_pad|><|vision_end|>")


def build_qwen2_vl(
    tokenizer, *, num_layers: int = 4, image_size: int = 16, seed: int = 0, video_processor=None
):
    """``(Qwen2VLForConditionalGeneration, Qwen2VLProcessor)``: 4x4-pixel patches merged 2x2 ->
    4 ``<|image_pad|>`` tokens per 16x16 picture; a Qwen2-VL language tower (3-D rotary
    positions). ``video_processor``: transformers builds Qwen2-VL processors only with one,
    which needs torchvision (see ``qwen2_vl_video_processor``)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|vision_start|>",
                "<|vision_end|>",
                "<|image_pad|>",
                "<|video_pad|>",
            ]
        }
    )
    patch, merge = 4, 2
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=2,
        **_HALF,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def qwen2_vl_video_processor():
    """Qwen2-VL's video processor (needs torchvision; ImportError without it)."""
    import transformers

    if not transformers.is_torchvision_available():
        raise ImportError("Qwen2-VL's processor needs torchvision")
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2)


FAMILIES = {
    "llava": build_vlm,
    "idefics3": build_idefics3,
    "gemma3": build_gemma3,
    "qwen2_vl": build_qwen2_vl,
}


def save_vlm(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, teacher: Path, sections: dict) -> Path:
    """A multimodal pipeline config for ``teacher`` with results, release and flags under ``tmp``."""
    config = {
        "teacher": str(teacher),
        "results_dir": str(tmp / "results"),
        "release_dir": str(tmp / "release"),
        "flags_dir": str(tmp / "flags"),
        **sections,
    }
    path = tmp / "multimodal.yaml"
    path.write_text("# test\n" + json.dumps(config))  # JSON is YAML
    return path


def nexus(*args: str) -> subprocess.CompletedProcess:
    """``python -m nexus ARGS`` in the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "nexus", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )
