"""Prompt/response rendering through a model's chat template, with the response tokens marked.

The prompt is rendered with ``add_generation_prompt=True`` and the full conversation without;
the response part is the difference of the two strings. Tokenizing the two parts separately
gives an exact boundary: ``response_mask`` is True on exactly the response tokens (including
the template's end-of-turn token), which are the ones scored (profiling, benchmarks) or
trained on (recovery fine-tuning). Models without a chat template use ``prompt + "\\n"`` and
end the response with EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus.errors import NexusError


@dataclass
class EncodedChat:
    input_ids: list[int]
    response_mask: list[bool]  # True on the tokens of the response

    @property
    def prompt_length(self) -> int:
        return self.response_mask.index(True) if True in self.response_mask else len(self.input_ids)


def _messages(prompt: str | list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render_prompt(tokenizer, prompt: str | list[dict[str, str]], *, system: str | None = None) -> str:
    """The text a model should continue to answer ``prompt`` (its chat template when it has one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            _messages(prompt, system), add_generation_prompt=True, tokenize=False
        )
    if isinstance(prompt, str):
        return prompt + "\n"
    return "\n".join(m["content"] for m in prompt) + "\n"


def encode_chat(
    tokenizer,
    prompt: str | list[dict[str, str]],
    response: str,
    *,
    system: str | None = None,
    max_length: int | None = None,
) -> EncodedChat:
    """Token ids of prompt + response and the response mask (see the module docstring).

    ``prompt`` may be a string (one user turn) or earlier messages of a conversation.
    When ``max_length`` is given the prompt is cut from the left so the response survives.
    """
    prompt_text = render_prompt(tokenizer, prompt, system=system)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(
            [*_messages(prompt, system), {"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(prompt_text):
            # Templates that rewrite earlier turns: fall back to appending the response.
            full = prompt_text + response + (tokenizer.eos_token or "")
        response_text = full[len(prompt_text) :]
    else:
        response_text = response + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not getattr(tokenizer, "chat_template", None))[
        "input_ids"
    ]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    if not response_ids:
        raise NexusError("empty response after tokenization")
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = max(0, max_length - len(response_ids))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :] if keep_prompt else []
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return EncodedChat(prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids))


def encode_text(tokenizer, text: str, *, max_length: int | None = None) -> list[int]:
    """Token ids of plain text (with the tokenizer's BOS when it adds one), cut to ``max_length``."""
    ids = tokenizer(text)["input_ids"]
    return ids[:max_length] if max_length is not None else ids
