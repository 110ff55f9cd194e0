"""Chat with a vision-language model: ``nexus chat --model_path RELEASE --image photo.png``.

:class:`VisionChatSession` has the text session's interface (``command`` / ``respond``), so the
terminal loop of :mod:`nexus.inference.chat` drives it unchanged. ``/image PATH`` attaches a
picture to the next message (several ``/image`` lines attach several); ``--image`` does the same
for the first one. The conversation keeps the pictures where they were given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus.errors import NexusError
from nexus.inference.session import QuitChat, TurnResult, _CallbackStreamer

HELP = (
    "commands: /image PATH (attach a picture to the next message), /reset (forget the conversation "
    "and the pictures), /help, /quit"
)


def is_vision_language(spec: str) -> bool:
    """Whether ``spec`` is a local model directory of an image-text-to-text architecture."""
    import json

    config = Path(spec).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


class VisionChatSession:
    """Conversation state (messages with their pictures) plus greedy or sampled generation."""

    def __init__(
        self, model, processor, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.9
    ):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.history: list[dict[str, Any]] = []
        self.images: list[Any] = []  # every picture of the conversation, in order
        self.pending: list[Any] = []  # attached to the next message

    def attach(self, path: str) -> str:
        from nexus.multimodal.data import _open_image

        try:
            image = _open_image(Path(path).expanduser(), path)
        except ValueError as exc:
            raise NexusError(str(exc)) from None
        self.pending.append(image)
        return f"image {path} attached ({image.size[0]}x{image.size[1]}) to the next message"

    def command(self, line: str) -> str:
        name, _, arg = line.strip().partition(" ")
        if name in ("/quit", "/exit"):
            raise QuitChat
        if name == "/help":
            return HELP
        if name == "/reset":
            self.history, self.images, self.pending = [], [], []
            return "conversation reset"
        if name == "/image":
            if not arg.strip():
                raise NexusError("usage: /image PATH")
            return self.attach(arg.strip())
        raise NexusError(f"unknown command {name}; {HELP}")

    def respond(self, user_text: str, on_text: Callable[[str], None] | None = None) -> TurnResult:
        import torch

        from nexus.multimodal.vlm import end_of_turn_ids, processor_inputs

        if not user_text.strip():
            raise NexusError("empty message")
        if not self.images and not self.pending:
            raise NexusError("no picture yet: attach one with /image PATH (or start with --image)")
        content = [{"type": "image"} for _ in self.pending] + [{"type": "text", "text": user_text}]
        messages = [*self.history, {"role": "user", "content": content}]
        images = self.images + self.pending
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        device = next(self.model.parameters()).device
        inputs = self.processor(images=[images], text=[prompt], return_tensors="pt")
        inputs = {k: v.to(device) for k, v in processor_inputs(inputs).items()}
        tokenizer = self.processor.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "eos_token_id": end_of_turn_ids(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if on_text is not None:
            kwargs["streamer"] = _CallbackStreamer(tokenizer, on_text)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - started
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        self.images, self.pending = images, []
        self.history += [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
        ]
        return TurnResult(text, len(new), seconds)


def open_vision_session(config, *, info) -> VisionChatSession:
    """Load the VLM named by a :class:`~nexus.inference.chat.ChatConfig` (its ``image`` attached)."""
    import torch

    from nexus.hardware import pick_device
    from nexus.models import count_parameters, decoder_layers
    from nexus.multimodal.vlm import load_vlm

    if config.assist or config.knowledge:
        raise NexusError("--assist and --knowledge are for text models; this is a vision-language model")
    model, processor, path = load_vlm(
        config.model_path, dtype=getattr(torch, config.dtype), device=str(pick_device(config.device))
    )
    print(
        f"loaded vision-language model {path} ({type(model).__name__}, {len(decoder_layers(model))} language "
        f"layers, {count_parameters(model) / 1e6:.1f}M parameters)",
        file=info,
    )
    session = VisionChatSession(
        model,
        processor,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
    )
    if config.image:
        print(session.attach(config.image), file=info)
    return session
