"""Inference: the terminal chat with auto-loading, RAG and assisted (speculative) generation.

* :func:`run_chat` / :class:`ChatConfig` -- ``nexus chat`` and ``scripts/inference.py``;
* :class:`ChatSession` -- history, chat template, RAG injection, streaming, slash commands;
* :func:`find_newest_release` / :func:`load_chat_model` -- what the chat talks to.
"""

from nexus.inference.chat import ChatConfig, chat_loop, open_session, run_chat
from nexus.inference.loading import NO_RELEASE, find_newest_release, load_chat_model, resolve_chat_model
from nexus.inference.session import ChatOptions, ChatSession, QuitChat, TurnResult

__all__ = [
    "NO_RELEASE",
    "ChatConfig",
    "ChatOptions",
    "ChatSession",
    "QuitChat",
    "TurnResult",
    "chat_loop",
    "find_newest_release",
    "load_chat_model",
    "open_session",
    "resolve_chat_model",
    "run_chat",
]
