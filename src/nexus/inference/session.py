"""A multi-turn chat with a causal LM: chat template, history, RAG injection, streaming,
optional assisted (speculative) generation, and the slash commands.

The session is I/O-free: :meth:`ChatSession.respond` takes the user's text and a callback for
streamed text; the terminal loop lives in :mod:`nexus.inference.chat`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus.data.templates import render_prompt
from nexus.errors import NexusError
from nexus.knowledge.tower import (
    DEFAULT_DECLINE_BELOW,
    DEFAULT_FOCUS,
    DEFAULT_HYBRID,
    DEFAULT_LAYOUT,
    LAYOUTS,
    ContextLayout,
    Retrieved,
)

PENALTY_SCOPES = ("conversation", "answer")

HELP = (
    "commands: /reset (forget the conversation), /rag on|off, /k N (chunks to retrieve), "
    "/focus N (keep the N sentences nearest the question, 0 = whole chunks), "
    "/sources (what the last answer retrieved), /cite on|off (append them to answers), /help, /quit"
)


def citation(chunks: list[Retrieved]) -> str:
    """``[sources: guide.md chunk 3; faq.md chunk 0]``: the document and chunk number of each
    context chunk, in the order the prompt gave them ('' without context)."""
    if not chunks:
        return ""
    from pathlib import Path

    return "[sources: " + "; ".join(f"{Path(c.source).name} chunk {c.position}" for c in chunks) + "]"


class QuitChat(Exception):  # noqa: N818  (control flow, not an error)
    """Raised by ``/quit``."""


@dataclass
class TurnResult:
    text: str
    new_tokens: int
    seconds: float
    retrieved: list[Retrieved] = field(default_factory=list)
    drafted: int | None = None  # assisted generation: draft tokens proposed / accepted
    accepted: int | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        if self.drafted is None:
            return None
        return self.accepted / self.drafted if self.drafted else 0.0

    def stats_line(self) -> str:
        line = f"[{self.new_tokens} tokens in {self.seconds:.2f} s, {self.tokens_per_second:.1f} tokens/s"
        if self.drafted is not None:
            line += f"; draft acceptance {self.acceptance_rate:.0%} ({self.accepted}/{self.drafted} tokens)"
        return line + "]"


def check_same_tokenizer(teacher, draft) -> None:
    """Assisted generation passes token ids between the models: refuse a draft tokenizer whose
    vocabulary (token -> id) or special tokens differ from the teacher's, in one line."""
    t_vocab, d_vocab = teacher.get_vocab(), draft.get_vocab()
    if t_vocab != d_vocab:
        differ = sum(d_vocab.get(token) != i for token, i in t_vocab.items()) + len(d_vocab.keys() - t_vocab)
        raise NexusError(
            f"--assist needs the draft model to use the teacher's tokenizer: {differ} of the "
            f"{len(t_vocab)} teacher tokens differ ({len(d_vocab)} in the draft vocabulary)"
        )
    for name in ("bos_token", "eos_token"):
        if getattr(teacher, name, None) != getattr(draft, name, None):
            raise NexusError(
                f"--assist needs the draft model to use the teacher's tokenizer: {name} is "
                f"{getattr(teacher, name, None)!r} for the teacher, {getattr(draft, name, None)!r} for the draft"
            )


class _CallbackStreamer:
    """Decode streamed token ids incrementally and hand finished text to ``on_text``.

    A tiny version of transformers' ``TextStreamer``: the first ``put`` (the prompt) is
    skipped, text is released up to the last whitespace so words are not split mid-token.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character
            return
        cut = max(text.rfind(" "), text.rfind("\n")) + 1
        if cut > self.printed:
            self.on_text(text[self.printed : cut])
            self.printed = cut

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.on_text(text[self.printed :])
        self.printed = len(text)


@contextlib.contextmanager
def _draft_length(assistant, draft_tokens: int | None):
    """transformers reads the draft length from the draft model's generation config: set a
    constant ``draft_tokens`` for one call and put the old values back after it."""
    if assistant is None or draft_tokens is None:
        yield
        return
    config = assistant.generation_config
    keys = ("num_assistant_tokens", "num_assistant_tokens_schedule")
    saved = {key: getattr(config, key, None) for key in keys}
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = draft_tokens, "constant"
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


@contextlib.contextmanager
def _quiet_transformers():
    """Assisted decoding makes transformers warn about its own internal calls (the draft's
    generate() gets a generation config plus arguments, and the teacher's repetition-penalty
    processor): nothing the user did or can change, so it must not land in the chat."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class _ForwardCounter:
    """Counts forward calls of a module (assisted generation: target passes and draft tokens)."""

    def __init__(self, module):
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


@dataclass
class ChatOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.9
    repetition_penalty: float = 1.1  # > 1 discourages repeating tokens (llama.cpp's default); 1 = off
    # which tokens the penalty counts: "conversation" (the whole prompt, retrieved context included,
    # and the answer so far; transformers' default) or "answer" (the answer so far only)
    penalty_scope: str = "conversation"
    system: str | None = None
    rag: bool = True
    k: int = 4
    context_tokens: int = 512  # token budget of the retrieved context (model tokens)
    # keep only the N sentences of the retrieved chunks most similar to the question (0 = whole chunks)
    focus: int = DEFAULT_FOCUS
    # with focus: answer "I don't know" without generating when no kept sentence is this similar
    # to the question (context was retrieved, so the question is on the documents' topic; 0 = off,
    # the default: calibrate it on your documents with bench_grounding.py --decline-below)
    decline_below: float = DEFAULT_DECLINE_BELOW
    # answer "I don't know" without generating when the question names something (a capitalised
    # word after its first) that none of the retrieved chunks mentions: the documents do not cover it
    decline_unknown_names: bool = True
    # of the retrieved chunks (after focus), keep only those that name everything the question names
    # (when any does): a small model otherwise copies the neighbouring document's number or name
    match_names: bool = True
    # answer "I don't know" without generating when the question asks how many / in what year and no
    # kept sentence holds a number / a year (nexus.inference.answer_types)
    check_answer_kind: bool = True
    # answer "I don't know" without generating when a retrieved document that does not name what the
    # question names says more about what it asks than the ones that do (a peer: another hut's
    # warden, asked who runs this hut; nexus.knowledge.tower.peer_says_more)
    peer_check: bool = True
    # let the model open its answer with a decline ("The documents do not say") even where the kept
    # sentences of the documents naming what the question names hold one of its words (names
    # aside): off by default, the checks above decide declines (the students declined answerable
    # questions whose sentence was right there)
    let_model_decline: bool = False
    cite: bool = False  # append the context's documents and chunk numbers to each answer
    # rank chunks and focus sentences by cosine similarity fused with BM25 (nexus.knowledge.lexical)
    hybrid: bool = DEFAULT_HYBRID
    layout: str = DEFAULT_LAYOUT.name  # how the context and the question are laid out (LAYOUTS)
    # assisted generation: draft tokens per teacher pass (None = transformers' default, up to 20,
    # cut short where the draft model's confidence falls below its threshold)
    draft_tokens: int | None = None
    # context-aware decoding strength (nexus.inference.cad): 0 = off; applies when context was retrieved
    cad: float = 0.0
    # prompt-lookup decoding (transformers' prompt_lookup_num_tokens): draft up to N tokens by finding
    # the answer's last tokens in the prompt, verified in one pass; greedy output is unchanged; 0 = off
    lookup_tokens: int = 0
    # copy bias (nexus.inference.cad.ContextCopy): logits added to the retrieved context's
    # continuation of the answer's last tokens (0 = off). 8 measured best on the dev grounding set
    # (docs/pipeline.md, "Copying from the context"): the release 9 -> 15 of 22, the teacher 8 -> 14
    copy_bias: float = 8.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.focus < 0:
            raise ValueError(f"focus must be >= 0, got {self.focus}")
        if self.lookup_tokens < 0:
            raise ValueError(f"lookup_tokens must be >= 0, got {self.lookup_tokens}")
        if self.lookup_tokens and self.cad:
            raise ValueError("prompt lookup (--lookup) and context-aware decoding (--cad) do not combine")
        if self.draft_tokens is not None and self.draft_tokens < 1:
            raise ValueError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError(
                f"penalty_scope must be one of {', '.join(PENALTY_SCOPES)}, got {self.penalty_scope!r}"
            )
        if self.cad < 0:
            raise ValueError(f"cad must be >= 0, got {self.cad}")
        if not 0 <= self.decline_below <= 1:
            raise ValueError(f"decline_below must be in [0, 1], got {self.decline_below}")
        if self.copy_bias < 0:
            raise ValueError(f"copy_bias must be >= 0, got {self.copy_bias}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def context_layout(self) -> ContextLayout:
        return LAYOUTS[self.layout]


class ChatSession:
    """Conversation state plus generation. ``assistant`` (a same-vocabulary model) turns on
    assisted generation: ``model`` verifies, ``assistant`` drafts; ``draft_tokenizer`` (the
    assistant's own tokenizer, when known) must encode text exactly as ``tokenizer`` does."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        tower=None,
        assistant=None,
        draft_tokenizer=None,
        options: ChatOptions | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.tower = tower
        self.assistant = assistant
        self.options = options or ChatOptions()
        self.history: list[dict[str, str]] = []
        self.last_retrieved: list[Retrieved] = []
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        if assistant is not None and assistant.config.vocab_size != model.config.vocab_size:
            raise NexusError(
                f"assisted generation needs the same vocabulary: the teacher has {model.config.vocab_size} "
                f"tokens, the draft model {assistant.config.vocab_size}"
            )
        if assistant is not None and self.options.lookup_tokens:
            raise NexusError("prompt lookup (--lookup) and assisted generation (--assist) do not combine")
        if assistant is not None and self.options.cad:
            raise NexusError(
                "context-aware decoding (--cad) and assisted generation (--assist) do not combine"
            )
        if assistant is not None and draft_tokenizer is not None:
            check_same_tokenizer(tokenizer, draft_tokenizer)
        if self.tower is not None:
            self.tower.count_tokens = self._count_tokens  # budget the context in the model's tokens

    # ------------------------------------------------------------------ commands

    def command(self, line: str) -> str:
        """Run a slash command; returns the message to show. ``/quit`` raises :class:`QuitChat`."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            raise QuitChat
        if name == "/help":
            return HELP
        if name == "/reset":
            self.history.clear()
            self.last_retrieved = []
            return "conversation reset"
        if name == "/rag":
            if arg not in ("on", "off", ""):
                raise NexusError("usage: /rag on|off")
            if arg == "on" and self.tower is None:
                raise NexusError("no knowledge index loaded: start the chat with --knowledge DIR")
            if arg:
                self.options.rag = arg == "on"
            state = "on" if self.options.rag and self.tower is not None else "off"
            return f"RAG {state}" + (f" ({len(self.tower)} chunks, k={self.options.k})" if self.tower else "")
        if name == "/k":
            if not arg.isdigit() or int(arg) < 1:
                raise NexusError("usage: /k N with N >= 1")
            self.options.k = int(arg)
            return f"k = {self.options.k}"
        if name == "/focus":
            if not arg.isdigit():
                raise NexusError("usage: /focus N with N >= 0 (0 = whole chunks)")
            self.options.focus = int(arg)
            return f"focus = {self.options.focus}" + (
                " (whole chunks)" if not self.options.focus else " sentences"
            )
        if name == "/cite":
            if arg not in ("on", "off", ""):
                raise NexusError("usage: /cite on|off")
            if arg:
                self.options.cite = arg == "on"
            return f"citations {'on' if self.options.cite else 'off'}"
        if name == "/sources":
            if not self.last_retrieved:
                return "no context was retrieved for the last answer"
            return "\n".join(
                f"[{c.rank}] {c.source} (chunk {c.position}, score {c.score:.2f}): {c.text[:100].replace(chr(10), ' ')}..."
                for c in self.last_retrieved
            )
        raise NexusError(f"unknown command {name}; {HELP}")

    # ------------------------------------------------------------------ prompt building

    def _count_tokens(self, texts) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = render_prompt(self.tokenizer, messages, system=self.options.system)
        return self.tokenizer(text, add_special_tokens=not getattr(self.tokenizer, "chat_template", None))[
            "input_ids"
        ]

    def build_input(self, user_text: str) -> tuple[list[int], list[Retrieved], list[str]]:
        """Token ids for the next answer, the context chunks used, and notices about cuts.

        When the prompt does not fit the context window (less ``max_new_tokens``), retrieved
        chunks are dropped first (last ranked first), then the oldest turns; a single message
        that still does not fit is refused.
        """
        chunks: list[Retrieved] = []
        if self.options.rag and self.tower is not None:
            chunks = self.tower.select_context(
                user_text,
                k=self.options.k,
                max_tokens=self.options.context_tokens,
                focus=self.options.focus,
                hybrid=self.options.hybrid,
                match_names=self.options.match_names,
            )
        history = list(self.history)
        limit = self.context_window - self.options.max_new_tokens
        notices: list[str] = []
        while True:
            layout = self.options.context_layout
            content = layout.augment(layout.format_context(chunks), user_text)
            ids = self._encode([*history, {"role": "user", "content": content}])
            if len(ids) <= limit:
                break
            if chunks:
                chunks = chunks[:-1]
                if not notices or not notices[-1].startswith("retrieved context"):
                    notices.append("retrieved context truncated to fit the context window")
            elif history:
                history = history[2:]
                notices.append("oldest turn dropped to fit the context window")
            else:
                raise NexusError(
                    f"the message is {len(ids)} tokens but the context window allows {limit} "
                    f"({self.context_window} less {self.options.max_new_tokens} for the answer): shorten it"
                )
        self.history = history
        return ids, chunks, notices

    # ------------------------------------------------------------------ generation

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, list | tuple) else ([ids] if ids is not None else [])
        for token in (self.tokenizer.eos_token, "<|im_end|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
        return ids

    def generate(
        self,
        input_ids: list[int],
        on_text: Callable[[str], None] | None = None,
        plain_ids: list[int] | None = None,
        copy_sources: list[list[int]] | None = None,
        banned_openings: list[list[int]] | None = None,
    ):
        """Generate an answer to ``input_ids``; returns ``(new_token_ids, seconds, drafted, accepted)``.
        ``plain_ids`` (the prompt without its retrieved context) turns on context-aware decoding,
        ``copy_sources`` (the retrieved chunks' token ids) the copy bias (``options.copy_bias``);
        the answer may not open with any of ``banned_openings`` (token ids)."""
        import torch
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        from nexus.inference.cad import ContextContrast, ContextCopy, NoOpening

        device = next(self.model.parameters()).device
        ids = torch.tensor([input_ids], device=device)
        kwargs = {
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": self.options.max_new_tokens,
            "eos_token_id": self._eos_ids(),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.options.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.options.temperature, top_p=self.options.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        processors = LogitsProcessorList()
        if plain_ids is not None and self.options.cad > 0:
            processors.append(ContextContrast(self.model, plain_ids, len(input_ids), self.options.cad))
        if copy_sources:
            processors.append(ContextCopy(copy_sources, len(input_ids), self.options.copy_bias))
        if banned_openings:
            processors.append(NoOpening(banned_openings, len(input_ids)))
        if self.options.repetition_penalty != 1.0:
            skip = len(input_ids) if self.options.penalty_scope == "answer" else None
            processors.append(RepetitionPenaltyLogitsProcessor(self.options.repetition_penalty, skip))
        if processors:
            # ours replace generate()'s own penalty (a model's generation config may set one)
            kwargs.update(logits_processor=processors, repetition_penalty=None)
        if on_text is not None:
            kwargs["streamer"] = _CallbackStreamer(self.tokenizer, on_text)
        if self.options.lookup_tokens:
            kwargs["prompt_lookup_num_tokens"] = self.options.lookup_tokens
        counters = None
        if self.assistant is not None:
            kwargs["assistant_model"] = self.assistant
            counters = (_ForwardCounter(self.model), _ForwardCounter(self.assistant))
        started = time.perf_counter()
        try:
            quiet = _quiet_transformers() if self.assistant is not None else contextlib.nullcontext()
            with torch.inference_mode(), _draft_length(self.assistant, self.options.draft_tokens), quiet:
                out = self.model.generate(ids, **kwargs)
        finally:
            seconds = time.perf_counter() - started
            if counters:
                for counter in counters:
                    counter.close()
        new = out[0, ids.shape[1] :].tolist()
        drafted = accepted = None
        if counters:
            # Each verification pass keeps the accepted draft tokens plus one token of its own.
            target_passes, drafted = counters[0].calls, counters[1].calls
            accepted = max(0, min(drafted, len(new) - target_passes))
        return new, seconds, drafted, accepted

    def _decline_reason(self, question: str, chunks: list[Retrieved]) -> str | None:
        """Why the retrieved documents cannot hold the answer (the chat then declines without
        generating), or None: the question names something no retrieved chunk (whole, before
        focus, with its document's title) mentions, another retrieved document says more about
        what it asks than the ones naming what it names (``peer_check``), it asks for a number or
        a year that no kept sentence holds (``check_answer_kind``), or no kept sentence reaches
        ``decline_below``."""
        from pathlib import Path

        from nexus.inference.answer_types import answer_kind, holds_kind
        from nexus.knowledge.tower import names_missing, question_names

        if not chunks or self.tower is None:
            return None
        if self.options.decline_unknown_names:
            texts = [c.text for c in chunks]
            named_text = getattr(self.tower, "named_text", None)  # a tower without documents: chunks alone
            if named_text is not None:
                texts += [named_text(c.row) for c in chunks]
            unknown = names_missing(question_names(question), " ".join(texts))
            if unknown:
                return f"the retrieved documents never name {', '.join(unknown)}"
        peer = getattr(self.tower, "last_peer", None) if self.options.match_names else None
        if self.options.peer_check and peer is not None:
            names = ", ".join(self._names(question, chunks))
            return f"{Path(peer.source).name} says more about what is asked than the documents naming {names}"
        if self.options.check_answer_kind:
            kind = answer_kind(question)
            if kind and not any(holds_kind(c.text, kind) for c in chunks):
                return f"the question asks for a {kind} and no retrieved sentence holds one"
        best = max(c.score for c in chunks)
        if self.options.focus and best < self.options.decline_below:
            return f"the closest retrieved sentence scores {best:.2f} < {self.options.decline_below:g} (--decline-below)"
        return None

    def _names(self, question: str, chunks: list[Retrieved]) -> list[str]:
        """What ``question`` names: the tower's reading (rare words the chunks hold included,
        ``KnowledgeTower.names_asked``), else its capitalised words."""
        from nexus.knowledge.tower import question_names

        names_asked = getattr(self.tower, "names_asked", None)
        return names_asked(question, chunks) if names_asked is not None else question_names(question)

    def _mentions_what_is_asked(self, question: str, chunks: list[Retrieved]) -> bool:
        """Whether the kept chunks all name what ``question`` names (it names something) and one of
        them holds a word of what it asks (:func:`~nexus.inference.answer_types.mentions_what_is_asked`,
        names and titles masked out of both)."""
        from nexus.inference.answer_types import mentions_what_is_asked
        from nexus.knowledge.tower import mask_names, names_missing

        names = self._names(question, chunks)
        named_text = getattr(self.tower, "named_text", None)
        if not names or not chunks or named_text is None:
            return False
        if any(names_missing(names, named_text(c.row)) for c in chunks):
            return False
        titles = [self.tower.docs[c.row].get("title", "") for c in chunks]
        masked = mask_names([question, *(c.text for c in chunks)], [*names, *titles])
        return mentions_what_is_asked(masked[0], masked[1:])

    def respond(self, user_text: str, on_text: Callable[[str], None] | None = None) -> TurnResult:
        """Answer one user message (RAG context prepended when on); history keeps the plain text."""
        if not user_text.strip():
            raise NexusError("empty message")
        ids, chunks, notices = self.build_input(user_text)
        self.last_retrieved = chunks
        plain = None
        if chunks and self.options.cad > 0:
            plain = self._encode([*self.history, {"role": "user", "content": user_text}])
        why = self._decline_reason(user_text, chunks)
        if why:
            from nexus.data.grounded import ABSTAIN_ANSWER

            notices.append(f"declined without generating: {why}")
            new, seconds, drafted, accepted = [], 0.0, None, None
            text = ABSTAIN_ANSWER
            if on_text is not None:
                on_text(text)
        else:
            sources = None
            if chunks and self.options.copy_bias > 0:
                sources = self.tokenizer([c.text for c in chunks], add_special_tokens=False)["input_ids"]
            banned = None
            if not self.options.let_model_decline and self._mentions_what_is_asked(user_text, chunks):
                from nexus.data.grounded import DECLINE_OPENINGS

                banned = self.tokenizer(list(DECLINE_OPENINGS), add_special_tokens=False)["input_ids"]
            new, seconds, drafted, accepted = self.generate(ids, on_text, plain, sources, banned)
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        if self.options.cite and chunks:
            cited = citation(chunks)
            if on_text is not None:
                on_text(("\n" if text else "") + cited)
            text = f"{text}\n{cited}" if text else cited  # the history keeps the answer alone
        return TurnResult(text, len(new), seconds, chunks, drafted, accepted, notices)
