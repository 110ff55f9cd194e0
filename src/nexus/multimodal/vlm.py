"""Vision-language models as plain transformers objects: build, encode, score.

Nexus handles any model ``AutoModelForImageTextToText`` loads with its ``AutoProcessor``; the
embedded default (and the students cut from it) is a ``LlavaForConditionalGeneration``: a
SigLIP vision tower, a two-layer projector, and a Llama language tower (SmolLM2). Prompts are
rendered by the processor's chat template (one ``{"type": "image"}`` item per picture, then the
text), pictures go to the processor nested per row, and whatever the processor returns with them
reaches the model (:func:`processor_inputs`: Qwen2-VL's ``image_grid_thw`` and
``mm_token_type_ids``, Idefics3's ``pixel_attention_mask``, Gemma 3's ``token_type_ids``), so the
same code serves a user's LLaVA, Idefics3/SmolVLM, Gemma 3 or Qwen2-VL checkpoint (tests:
tests/test_multimodal_families.py, on tiny random models of each; Qwen2-VL's processor needs
torchvision, :func:`check_processor_dependencies`).

Scoring, used by the teacher build, the phases' evaluation and the benchmark:

* multiple choice by log-likelihood -- each choice is scored as the response (its tokens and the
  end-of-turn token that closes it, summed), the highest wins;
* short answer by exact match -- greedy decoding, compared after lower-casing and stripping
  spaces and a final full stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nexus.errors import NexusError
from nexus.multimodal.synthetic import VisionExample

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
# Tokens that close an assistant turn in the chat templates of common VLM families.
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<end_of_utterance>", "<|eot_id|>", "<|end|>")
# ChatML like SmolLM2's, without its default system prompt (shorter sequences); images go first.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Where the families keep their vision side: the encoder and the projector into the language
# tower (LLaVA and Gemma 3: vision_tower + multi_modal_projector; Idefics3: vision_model +
# connector; Qwen2-VL: visual, whose merger is the projector).
VISION_TOWERS = ("vision_tower", "vision_model", "visual")
PROJECTORS = ("multi_modal_projector", "connector", "visual.merger")


def vision_parts(model: nn.Module) -> dict[str, nn.Module]:
    """``{"vision": tower, "projector": projector}`` of a VLM, each where the family has one."""
    inner = getattr(model, "model", model)
    out = {}
    for part, names in (("vision", VISION_TOWERS), ("projector", PROJECTORS)):
        for name in names:
            try:
                out[part] = inner.get_submodule(name)
                break
            except AttributeError:
                continue
    return out


def build_processor(tokenizer, *, image_size: int, patch_size: int):
    """A LlavaProcessor over ``tokenizer`` (``<image>`` added as a special token when missing)
    and a SigLIP-style image processor (resize to ``image_size``, scale to [-1, 1]); built from
    parts, no download."""
    from transformers import LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_llava(language_model: nn.Module, processor, vision_config) -> nn.Module:
    """A ``LlavaForConditionalGeneration`` whose language tower is ``language_model``'s weights
    (the vocabulary grown by the image token) and whose vision tower and projector are new."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    text_config = language_model.config
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.model.language_model.load_state_dict(
        language_model.model.state_dict(), strict=False
    )
    if missing or unexpected:
        raise NexusError(
            f"language tower weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.lm_head.weight.data.copy_(language_model.get_output_embeddings().weight.data)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config = language_model.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def _messages(example: VisionExample, prompt: str, response: str | None) -> list[dict[str, Any]]:
    """One user turn (images where the prompt's ``<image>`` markers are, else first)."""
    parts = prompt.split(IMAGE_TOKEN)
    content: list[dict[str, Any]] = []
    if len(parts) > 1:
        for i, text in enumerate(parts):
            if text:
                content.append({"type": "text", "text": text})
            if i < len(parts) - 1:
                content.append({"type": "image"})
    else:
        content = [{"type": "image"} for _ in example.images] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    if response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return messages


def render(processor, example: VisionExample, response: str | None = None) -> str:
    """The prompt through the chat template; with ``response``, the whole exchange."""
    return processor.apply_chat_template(
        _messages(example, example.prompt, response), add_generation_prompt=response is None, tokenize=False
    )


def encode(
    processor, examples: Sequence[VisionExample], responses: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """A right-padded training/scoring batch: ``input_ids``, ``attention_mask``, ``pixel_values``
    (every row's images in order), the other inputs the processor gives with them (see
    :func:`processor_inputs`) and ``labels`` (the next token at response positions, else
    -100; ``labels[t]`` is predicted at ``t`` like the Nexus trainer's packed rows)."""
    responses = list(responses) if responses is not None else [e.response for e in examples]
    prompts = [render(processor, e) for e in examples]
    fulls = [render(processor, e, r) for e, r in zip(examples, responses, strict=True)]
    images = [list(e.images) for e in examples]  # nested per row: what every processor accepts
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        batch = processor(images=images, text=fulls, return_tensors="pt", padding=True)
        prompt_lens = processor(images=images, text=prompts, return_tensors="pt", padding=True)[
            "attention_mask"
        ].sum(1)
    finally:
        tokenizer.padding_side = side
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    lengths = mask.sum(1)
    for row in range(ids.shape[0]):
        start, end = int(prompt_lens[row]), int(lengths[row])
        # the response tokens and the end-of-turn token after them; the template's trailing
        # newline is not a target
        end = min(end, start + _response_span(tokenizer, ids[row, start:end]))
        labels[row, start - 1 : end - 1] = ids[row, start:end]
    out = processor_inputs(batch)
    out["labels"] = labels
    return out


# The text side of an encoded batch; everything else the processor returns goes to the model
# with the pictures (pixel_values, image_grid_thw, pixel_attention_mask, token_type_ids, ...).
TEXT_KEYS = ("input_ids", "attention_mask", "labels")


def processor_inputs(batch) -> dict[str, torch.Tensor]:
    """The processor's outputs as model inputs: all of them, except ``token_type_ids`` that are
    all zero (a text tokenizer's, which a LLaVA forward does not take); Gemma 3's mark the image
    tokens, which attend to each other both ways."""
    return {
        k: v for k, v in batch.items() if not (k == "token_type_ids" and not bool(torch.as_tensor(v).any()))
    }


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that end a reply: the end-of-turn tokens the vocabulary has, and EOS."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in END_OF_TURN if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _response_span(tokenizer, tail: torch.Tensor) -> int:
    """How many tokens of ``tail`` (the response onwards) are targets: up to the end-of-turn."""
    hits = torch.isin(tail, torch.tensor(end_of_turn_ids(tokenizer))).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(tail)


def response_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's target tokens, ``(B,)``."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = model(**inputs, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    mask = labels != IGNORE_INDEX
    picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(1)


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


@torch.no_grad()
def choose(model: nn.Module, processor, example: VisionExample) -> int:
    """Index of the choice with the highest log-likelihood as the response."""
    batch = encode(processor, [example] * len(example.choices), example.choices)
    device = next(model.parameters()).device
    return int(response_logprobs(model, {k: v.to(device) for k, v in batch.items()}).argmax())


@torch.no_grad()
def generate_answers(
    model: nn.Module, processor, examples: Sequence[VisionExample], *, max_new_tokens: int = 8
) -> list[str]:
    """Greedy answers to a batch of examples (left-padded prompts)."""
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        prompts = [render(processor, e) for e in examples]
        images = [list(e.images) for e in examples]  # nested per row: what every processor accepts
        batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in processor_inputs(batch).items()}
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_of_turn_ids(tokenizer),
    )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate_accuracy(
    model: nn.Module, processor, examples: Sequence[VisionExample], *, batch_size: int = 16
) -> dict[str, Any]:
    """Multiple-choice (log-likelihood) and short-answer (exact match) accuracy, overall and per
    capability, plus each row's outcome (for side-by-side reports)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        answers = generate_answers(model, processor, chunk)
        for example, answer in zip(chunk, answers, strict=True):
            picked = choose(model, processor, example) if example.choices else None
            rows.append(
                {
                    "capability": example.capability,
                    "image": ", ".join(example.image_names),
                    "prompt": example.prompt,
                    "reference": example.response,
                    "answer": answer.strip(),
                    "exact": normalize_answer(answer) == normalize_answer(example.response),
                    "choice": example.choices[picked] if picked is not None else None,
                    "choice_correct": (picked == example.label) if picked is not None else None,
                }
            )
    return summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(items, key):
        scored = [r[key] for r in items if r[key] is not None]
        return sum(scored) / len(scored) if scored else None

    capabilities = sorted({r["capability"] for r in rows})
    return {
        "n": len(rows),
        "multiple_choice": rate(rows, "choice_correct"),
        "exact_match": rate(rows, "exact"),
        "by_capability": {
            c: {
                "n": sum(r["capability"] == c for r in rows),
                "multiple_choice": rate([r for r in rows if r["capability"] == c], "choice_correct"),
                "exact_match": rate([r for r in rows if r["capability"] == c], "exact"),
            }
            for c in capabilities
        },
        "rows": rows,
    }


def resolve_vlm(spec: str) -> str:
    """A vision-language model spec as a loadable path (or hub name): ``default`` is the embedded
    teacher (built on first use), anything else goes through :func:`nexus.models.resolve_model`
    (a local directory, a release, a training checkpoint folder, a hub name)."""
    if spec == "default":
        from nexus.multimodal.default_teacher import default_teacher_path

        return str(default_teacher_path())
    from nexus.models import resolve_model

    return resolve_model(spec).path


def check_processor_dependencies(spec: str, model_type: str) -> None:
    """A one-line error when the family's processor cannot be built here: transformers builds a
    processor that also handles video (Qwen2-VL's) only with torchvision, even for pictures."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if name else None
    if cls is None or transformers.is_torchvision_available():
        return
    if "video_processor" in cls.get_attributes():
        raise NexusError(
            f"{spec} is a '{model_type}' model, whose processor ({name}) transformers builds only with "
            "torchvision, which is not installed here: pip install torchvision (the build that matches your torch)"
        )


def load_vlm(spec: str, *, dtype: torch.dtype | None = None, device: str | None = None):
    """``(model, processor, path)`` through ``AutoModelForImageTextToText`` and
    ``AutoProcessor``, model in eval mode (float32 unless ``dtype``)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    path = resolve_vlm(spec)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise NexusError(f"cannot read the model config of {spec}: {str(exc).splitlines()[0]}") from None
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise NexusError(
            f"{spec} is a '{config.model_type}' model, not an image-text-to-text model (LLaVA, Idefics3, "
            "Qwen2-VL, Gemma 3, ...): the multimodal pipeline needs a vision-language teacher"
        )
    check_processor_dependencies(spec, config.model_type)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise NexusError(f"cannot load {spec}: {str(exc).splitlines()[0]}") from None
    if getattr(processor, "tokenizer", None) is not None and processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if device:
        model.to(device)
    return model.eval(), processor, path
