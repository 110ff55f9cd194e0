"""The terminal chat: load the model (and its knowledge index), then answer turns.

``run_chat(config)`` is the entry point behind ``nexus chat`` and ``scripts/inference.py``.
On a terminal it shows a ``>>> `` prompt; piped stdin is read line by line, one turn per
line. An error in one turn is reported and the session goes on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from nexus.errors import NexusError
from nexus.inference.session import ChatOptions, ChatSession, QuitChat, TurnResult

log = logging.getLogger(__name__)
PROMPT = ">>> "


@dataclass
class ChatConfig:
    """What `nexus chat` talks to and how it generates."""

    model_path: str | None = field(
        default=None,
        metadata={
            "help": "model spec (release, HF dir, checkpoint, GGUF, 'default'); default: newest release"
        },
    )
    prompt: str | None = field(default=None, metadata={"help": "answer this once and exit"})
    image: str | None = field(
        default=None,
        metadata={"help": "a picture for a vision-language model's first message (/image PATH later)"},
    )
    knowledge: str | None = field(
        default=None, metadata={"help": "knowledge index directory (default: the model's own)"}
    )
    rag: bool = field(default=True, metadata={"help": "prepend retrieved context when an index is loaded"})
    k: int = field(default=4, metadata={"help": "chunks to retrieve per question"})
    threshold: float | None = field(
        default=None, metadata={"help": "min cosine similarity of a retrieved chunk"}
    )
    context_tokens: int = field(default=512, metadata={"help": "token budget of the retrieved context"})
    focus: int = field(
        default=ChatOptions.focus,
        metadata={"help": "keep the N retrieved sentences nearest the question (0 = whole chunks)"},
    )
    cite: bool = field(
        default=False, metadata={"help": "append the context's documents and chunk numbers to each answer"}
    )
    penalty_scope: str = field(
        default=ChatOptions.penalty_scope,
        metadata={"help": "tokens the repetition penalty counts: 'conversation' or 'answer'"},
    )
    cad: float = field(
        default=ChatOptions.cad,
        metadata={
            "help": "context-aware decoding strength: favour what the retrieved context adds (0 = off)"
        },
    )
    copy_bias: float = field(
        default=ChatOptions.copy_bias,
        metadata={"help": "logits added to the retrieved context's continuation of the answer (0 = off)"},
    )
    decline_unknown_names: bool = field(
        default=ChatOptions.decline_unknown_names,
        metadata={"help": "decline when the question names something no retrieved document mentions"},
    )
    match_names: bool = field(
        default=ChatOptions.match_names,
        metadata={
            "help": "keep only the retrieved chunks that name everything the question names (when any does)"
        },
    )
    check_answer_kind: bool = field(
        default=ChatOptions.check_answer_kind,
        metadata={
            "help": "decline how-many / what-year questions when no retrieved sentence holds a number / year"
        },
    )
    peer_check: bool = field(
        default=ChatOptions.peer_check,
        metadata={
            "help": "decline when a retrieved document not naming what the question names says more about what it asks"
        },
    )
    let_model_decline: bool = field(
        default=ChatOptions.let_model_decline,
        metadata={"help": "let the model decline where the retrieved sentences hold a word of what is asked"},
    )
    lookup_tokens: int = field(
        default=ChatOptions.lookup_tokens,
        metadata={"help": "prompt-lookup decoding: draft tokens per pass from the prompt (0 = off)"},
    )
    decline_below: float = field(
        default=ChatOptions.decline_below,
        metadata={"help": "with focus: decline when no retrieved sentence is this similar (0 = off)"},
    )
    retrieval: str = field(
        default="hybrid" if ChatOptions.hybrid else "dense",
        metadata={"help": "'dense' (cosine similarity) or 'hybrid' (fused with BM25)"},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "max tokens per answer"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (with temperature > 0)"})
    repetition_penalty: float = field(
        default=1.1, metadata={"help": "penalty on tokens already in the conversation (1 = off)"}
    )
    system: str | None = field(default=None, metadata={"help": "system message"})
    teacher: str | None = field(default=None, metadata={"help": "teacher spec for assisted generation"})
    assist: bool = field(
        default=False, metadata={"help": "teacher generates, the model drafts (speculative)"}
    )
    draft_tokens: int | None = field(
        default=None,
        metadata={"help": "with --assist: draft tokens per teacher pass (default: adaptive)"},
    )
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)"})
    verbose: bool = field(
        default=False, metadata={"help": "print tokens/s (and draft acceptance) per answer"}
    )
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.assist and not self.teacher:
            raise ValueError("--assist needs --teacher SPEC (the model that verifies the drafts)")
        if self.teacher and not self.assist:
            raise ValueError("--teacher is used with --assist (the chat model becomes the draft model)")
        if self.draft_tokens is not None and not self.assist:
            raise ValueError("--draft-tokens is used with --assist")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.context_tokens < 1:
            raise ValueError(f"context_tokens must be >= 1, got {self.context_tokens}")
        ChatOptions(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            k=self.k,
            focus=self.focus,
            draft_tokens=self.draft_tokens,
            cad=self.cad,
            copy_bias=self.copy_bias,
            lookup_tokens=self.lookup_tokens,
            decline_below=self.decline_below,
            penalty_scope=self.penalty_scope,
        )
        if self.retrieval not in ("dense", "hybrid"):
            raise ValueError(f"retrieval must be dense or hybrid, got {self.retrieval!r}")
        if self.cad and self.assist:
            raise ValueError("--cad and --assist do not combine")
        if self.lookup_tokens and self.assist:
            raise ValueError("--lookup and --assist do not combine")


def open_session(config: ChatConfig, *, info: TextIO = sys.stderr, cwd: str | Path = ".") -> ChatSession:
    """Load the model(s) and the knowledge index named by ``config``; say what was loaded."""
    from nexus.inference.loading import (
        describe_loaded,
        knowledge_dir_for,
        load_chat_model,
        resolve_chat_model,
    )
    from nexus.knowledge.tower import KnowledgeTower

    spec = resolve_chat_model(config.model_path, cwd)  # before torch loads: no release fails fast
    from nexus.hardware import pick_device

    device = str(pick_device(config.device))
    model, tokenizer, resolved = load_chat_model(
        spec, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code
    )
    assistant = draft_tokenizer = None
    if config.assist:
        assistant, draft_tokenizer = model, tokenizer
        model, tokenizer, teacher_resolved = load_chat_model(
            config.teacher, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code
        )
        print(describe_loaded(teacher_resolved, model) + " as the generating model", file=info)
        print(describe_loaded(resolved, assistant) + " as the draft model (assisted generation)", file=info)
    else:
        print(describe_loaded(resolved, model), file=info)
    tower = None
    knowledge = Path(config.knowledge) if config.knowledge else knowledge_dir_for(resolved)
    if knowledge is not None:
        tower = KnowledgeTower.load(knowledge, k=config.k, max_context_tokens=config.context_tokens)
        if config.threshold is not None:
            tower.threshold = config.threshold
        print(
            f"knowledge index {knowledge}: {len(tower)} chunks (RAG {'on' if config.rag else 'off'})",
            file=info,
        )
    options = ChatOptions(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        system=config.system,
        rag=config.rag,
        k=config.k,
        context_tokens=config.context_tokens,
        focus=config.focus,
        cite=config.cite,
        draft_tokens=config.draft_tokens,
        cad=config.cad,
        copy_bias=config.copy_bias,
        lookup_tokens=config.lookup_tokens,
        decline_below=config.decline_below,
        decline_unknown_names=config.decline_unknown_names,
        match_names=config.match_names,
        check_answer_kind=config.check_answer_kind,
        peer_check=config.peer_check,
        let_model_decline=config.let_model_decline,
        hybrid=config.retrieval == "hybrid",
        penalty_scope=config.penalty_scope,
    )
    return ChatSession(
        model, tokenizer, tower=tower, assistant=assistant, draft_tokenizer=draft_tokenizer, options=options
    )


def _answer(session: ChatSession, text: str, out: TextIO, info: TextIO, verbose: bool) -> TurnResult:
    def stream(piece: str) -> None:
        out.write(piece)
        out.flush()

    result = session.respond(text, on_text=stream)
    out.write("\n")
    out.flush()
    for notice in result.notices:
        print(f"note: {notice}", file=info)
    if verbose:
        print(result.stats_line(), file=info)
    return result


def _read_line(stdin: TextIO, interactive: bool) -> str | None:
    if interactive and stdin is sys.stdin:
        try:
            return input(PROMPT)
        except EOFError:
            return None
    line = stdin.readline()
    return line if line else None


def chat_loop(
    session: ChatSession, *, stdin: TextIO, out: TextIO, info: TextIO, verbose: bool = False
) -> int:
    """Read turns until /quit or end of input. Errors end the turn, not the session."""
    interactive = stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        print(f"chat ready. {session.command('/help')}", file=info)
    while True:
        try:
            line = _read_line(stdin, interactive)
        except KeyboardInterrupt:
            out.write("\n")
            return 0
        if line is None:
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                print(session.command(line), file=out, flush=True)
            else:
                _answer(session, line, out, info, verbose)
        except QuitChat:
            return 0
        except KeyboardInterrupt:
            print("\n[interrupted]", file=info, flush=True)
        except NexusError as exc:
            print(f"error: {exc}", file=info, flush=True)
        except Exception as exc:  # noqa: BLE001  (one bad turn must not end the session)
            log.debug("turn failed", exc_info=True)
            print(f"error: {type(exc).__name__}: {exc}", file=info, flush=True)


def run_chat(
    config: ChatConfig, *, stdin: TextIO | None = None, out: TextIO | None = None, info: TextIO | None = None
) -> int:
    """Answer ``config.prompt`` once, or chat over ``stdin`` (a terminal or a pipe)."""
    stdin, out, info = stdin or sys.stdin, out or sys.stdout, info or sys.stderr
    from nexus.inference.loading import resolve_chat_model
    from nexus.multimodal.chat import is_vision_language, open_vision_session

    if config.model_path and is_vision_language(resolve_chat_model(config.model_path)):
        session = open_vision_session(config, info=info)
    elif config.image:
        raise NexusError("--image needs a vision-language model (an image-text-to-text checkpoint)")
    else:
        session = open_session(config, info=info)
    if config.prompt is not None:
        _answer(session, config.prompt, out, info, config.verbose)
        return 0
    return chat_loop(session, stdin=stdin, out=out, info=info, verbose=config.verbose)
