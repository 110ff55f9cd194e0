"""Data shared by every phase: native dataset formats, chat rendering, the built-in offline corpus.

* :func:`load_examples` reads JSONL / JSON / ``.gz`` files in the native formats of the public
  sets Nexus uses (GSM8K, Code Alpaca, Self-Instruct, PIQA, HumanEval) and the generic
  ``{"text"}``, ``{"prompt", "response"}`` and ``{"messages"}`` rows, into :class:`Example`;
* :func:`encode_chat` renders a prompt/response through the model's chat template and marks
  the response tokens (the ones that are scored or trained on);
* :mod:`nexus.data.builtin` generates the offline default corpus (stdlib Python code,
  arithmetic word problems with worked answers, project-written chat prompts).
"""

from nexus.data.formats import DOMAINS, Example, load_examples, read_rows
from nexus.data.templates import EncodedChat, encode_chat, encode_text, render_prompt

__all__ = [
    "DOMAINS",
    "EncodedChat",
    "Example",
    "encode_chat",
    "encode_text",
    "load_examples",
    "read_rows",
    "render_prompt",
]
