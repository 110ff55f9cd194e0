"""Capabilities as probe sets: which examples measure a capability, and how they are tokenized.

A capability (``code``, ``math``, ``chat``, ``rag``, or any name) is a list of probe examples
(built-in ``rag``: questions about made-up profiles answered from the RAG-layout context that holds
the answer, ``nexus.data.grounded``; it measures reading retrieved documents):

* ``text``: every token after the first is scored (plain language modelling);
* ``chat``: prompt + response rendered through the model's chat template, only the response
  tokens scored (``nexus.data.encode_chat``);
* ``code`` (HumanEval-format rows): the prompt as plain text, the canonical solution scored;
* ``choice`` (PIQA-format rows): each choice is scored as a continuation of
  ``"Question: {goal}\\nAnswer:"`` (lm-eval's PIQA prompt); the item is right when the
  correct choice has the highest summed log-likelihood.

Probes come from JSONL files in the native formats ``nexus.data`` reads, or, with no file for
a capability, from the built-in offline corpus (``nexus.data.builtin``). They are chosen with a
fixed seed: the rows are shuffled with ``seed`` and ``[offset, offset + n)`` is taken, so two
offsets give disjoint samples.

Phase 1 chooses the student's layers on the probes, so no probe is a row the benchmark scores
(that would be tuning on the test set): files of the evaluation-only sets (PIQA, HumanEval rows,
:data:`nexus.data.splits.EVAL_ONLY`) are refused, the evaluation split of GSM8K / Code Alpaca /
Self-Instruct files is left out (only training-split rows are probes), and built-in probes that
are questions of the built-in benchmark suite (possible for math with the suite's seed) are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nexus.data import Example, encode_chat, encode_text, load_examples
from nexus.errors import NexusError

log = logging.getLogger(__name__)

BUILTIN_CAPABILITIES = ("code", "math", "chat", "rag")
RAG_PROBE_SEED = 7919  # the grounded-row generator under a seed no training default uses
MC_PROMPT = "Question: {goal}\nAnswer:"


@dataclass
class EncodedProbe:
    """One scored token sequence. ``score_mask[t]`` is True when token ``t`` is scored (predicted
    from the tokens before it); ``score_mask[0]`` is always False."""

    input_ids: list[int]
    score_mask: list[bool]
    example: int  # index of the probe example in its set
    choice: int = -1  # choice index for multiple-choice items, -1 otherwise
    inputs: dict | None = None  # further model inputs (an image probe's pixel_values), or None


@dataclass
class ProbeSet:
    """The probes of one capability, tokenized."""

    name: str
    examples: list[Example]
    sequences: list[EncodedProbe]
    sources: list[str]  # where the examples came from (files, or "builtin:...")
    truncated: int = 0  # sequences cut to max_tokens
    labels: dict[int, int] = field(default_factory=dict)  # example -> right choice (multiple choice)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.labels)

    @property
    def num_scored_tokens(self) -> int:
        return sum(sum(s.score_mask) for s in self.sequences)

    def sha256(self) -> str:
        return probes_hash(self.examples)


def probes_hash(examples: Sequence[Example]) -> str:
    """Content hash of a probe list (order-independent; ``source`` ignored)."""
    rows = sorted(json.dumps(_example_row(e), sort_keys=True) for e in examples)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# -- choosing the examples ---------------------------------------------------------------------


def parse_probe_specs(specs: Sequence[str]) -> list[tuple[str | None, Path]]:
    """``["math=gsm8k.jsonl", "probes.jsonl"]`` -> ``[("math", Path), (None, Path)]``.

    A bare path assigns each row to its own domain (the row's ``domain`` or its format's).
    """
    parsed = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and "/" not in name and not Path(spec).exists():
            parsed.append((name.strip(), Path(path)))
        else:
            parsed.append((None, Path(spec)))
    return parsed


def select(examples: Sequence[Example], n: int, seed: int, offset: int = 0) -> list[Example]:
    """Shuffle with ``seed`` and take ``[offset, offset + n)`` (disjoint for disjoint offsets)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[offset : offset + n]]


def _usable(example: Example) -> bool:
    if example.kind == "chat":
        return bool(example.messages) or bool(example.prompt and example.response.strip())
    if example.kind == "text":
        return bool(example.text.strip())
    if example.kind == "choice":
        return len(example.choices) >= 2 and 0 <= example.label < len(example.choices)
    return bool(example.response.strip())  # code


def collect_examples(
    capabilities: Sequence[str],
    probe_specs: Sequence[str],
    *,
    num_probes: int,
    seed: int,
    offset: int = 0,
    builtin_chat=None,
) -> tuple[dict[str, list[Example]], dict[str, list[str]]]:
    """The chosen probe examples per capability, and where they came from.

    Capabilities named in a ``NAME=PATH`` spec are added to ``capabilities`` if missing. A
    capability with no file rows uses the built-in corpus (code, math, chat only);
    ``builtin_chat(examples)`` fills the built-in chat prompts' responses (the teacher's answers).
    """
    names = list(dict.fromkeys(capabilities))
    pools: dict[str, list[Example]] = {}
    sources: dict[str, list[str]] = {}
    for name, path in parse_probe_specs(probe_specs):
        examples = training_rows(load_examples(path, domain=name), path)
        if name is not None and name not in names:
            names.append(name)
        for example in examples:
            cap = name or example.domain
            if cap is None:
                raise NexusError(f"{example.source}: row has no domain; give the file as CAPABILITY={path}")
            if cap not in names:
                continue
            if name is None:
                example.domain = cap
            pools.setdefault(cap, []).append(example)
            if str(path) not in sources.setdefault(cap, []):
                sources[cap].append(str(path))
    names = list(dict.fromkeys(names))

    chosen: dict[str, list[Example]] = {}
    for cap in names:
        if cap in pools:
            usable = [e for e in pools[cap] if _usable(e)]
            if not usable:
                raise NexusError(f"no usable probes for capability '{cap}' in {', '.join(sources[cap])}")
            picked = select(usable, num_probes, seed, offset)
            if not picked:
                raise NexusError(
                    f"capability '{cap}': {len(usable)} probes in {', '.join(sources[cap])}, none left after "
                    f"offset {offset}"
                )
        elif cap in BUILTIN_CAPABILITIES:
            picked = _builtin(cap, num_probes, seed, offset, builtin_chat)
            sources[cap] = [f"builtin:{cap}"]
        else:
            raise NexusError(
                f"no probes for capability '{cap}': give a file with --probes {cap}=PATH "
                f"(built-in probes exist for {', '.join(BUILTIN_CAPABILITIES)})"
            )
        if len(picked) < num_probes:
            log.warning(
                "capability '%s': only %d probes available (asked for %d)", cap, len(picked), num_probes
            )
        for example in picked:
            example.domain = cap
        chosen[cap] = picked
    return chosen, sources


def training_rows(examples: list[Example], path: Path) -> list[Example]:
    """The rows of a probe file that may choose layers: refused when they are an evaluation-only
    set, without the evaluation split otherwise (see the module docstring)."""
    from nexus.data.splits import EVAL_ONLY, without_eval_rows

    reserved = sorted({e.format for e in examples if e.format in EVAL_ONLY})
    if reserved:
        raise NexusError(
            f"{path}: {', '.join(reserved)} rows are evaluation-only (the benchmark scores them); probes "
            "choose the student's layers, so they must be training rows: give another file"
        )
    kept, dropped = without_eval_rows(examples)
    if dropped:
        log.info("%s: %d evaluation-split rows left out of the probes", path, dropped)
    return kept


def _benchmark_questions(cap: str) -> set[str]:
    """The built-in benchmark suite's questions for the built-in capability ``cap``."""
    from nexus.benchmark.tasks import _builtin_rows

    key = {"code": "prompt", "math": "question", "chat": "goal"}[cap]
    return {" ".join(row[key].split()) for _, row in _builtin_rows(cap)}


def _builtin(cap: str, n: int, seed: int, offset: int, builtin_chat) -> list[Example]:
    from nexus.data import builtin

    if cap == "rag":  # reading retrieved context: answerable grounded rows, the answer scored
        from nexus.data.grounded import fact_rows

        rows = [row.example for row in fact_rows(4 * (offset + n), RAG_PROBE_SEED + seed) if not row.absent]
        return rows[offset : offset + n]
    held_out = _benchmark_questions(cap)

    def clean(examples: list[Example]) -> list[Example]:
        return [e for e in examples if " ".join((e.prompt or e.text).split()) not in held_out]

    enough = offset + n + len(held_out)  # the generators' first rows do not depend on the count
    if cap == "code":
        examples = clean(builtin.python_source_snippets(enough, seed))[offset : offset + n]
    elif cap == "math":
        examples = clean(builtin.arithmetic_word_problems(enough, seed))[offset : offset + n]
    else:
        examples = clean(builtin.chat_prompt_examples(None, seed))[offset : offset + n]
        if builtin_chat is None:
            raise NexusError("built-in chat probes need a model to answer them")
        examples = builtin_chat(examples)
    if not examples:
        raise NexusError(f"built-in '{cap}' probes: none left after offset {offset}")
    return examples


# -- tokenizing ---------------------------------------------------------------------------------


def encode_probes(
    name: str, examples: Sequence[Example], tokenizer, *, max_tokens: int, sources: Sequence[str] = ()
) -> ProbeSet:
    """Tokenize ``examples``; sequences longer than ``max_tokens`` are truncated (counted, warned).

    Chat responses keep their start (the prompt is cut from the left first); text keeps its
    start; a multiple-choice context is cut from the left so the choice survives.
    """
    sequences: list[EncodedProbe] = []
    labels: dict[int, int] = {}
    truncated = 0
    for index, example in enumerate(examples):
        encoded = _encode_example(example, tokenizer, max_tokens)
        for choice, (ids, mask, was_cut) in enumerate(encoded):
            truncated += was_cut
            if not any(mask):
                raise NexusError(
                    f"{example.source}: nothing left to score after truncating to {max_tokens} tokens"
                )
            sequences.append(EncodedProbe(ids, mask, index, choice if example.kind == "choice" else -1))
        if example.kind == "choice":
            labels[index] = example.label
    if truncated:
        log.warning("capability '%s': %d probe sequences truncated to %d tokens", name, truncated, max_tokens)
    return ProbeSet(name, list(examples), sequences, list(sources), truncated, labels)


def _encode_example(example: Example, tokenizer, max_tokens: int) -> list[tuple[list[int], list[bool], bool]]:
    if example.kind == "text":
        ids = encode_text(tokenizer, example.text)
        cut = len(ids) > max_tokens
        ids = ids[:max_tokens]
        return [(ids, [False] + [True] * (len(ids) - 1), cut)]
    if example.kind == "chat":
        if example.messages:
            prompt, response = example.messages[:-1], example.messages[-1]["content"]
        else:
            prompt, response = example.prompt, example.response
        full = encode_chat(tokenizer, prompt, response)
        if len(full.input_ids) <= max_tokens:
            return [(full.input_ids, _shifted(full.response_mask), False)]
        enc = encode_chat(tokenizer, prompt, response, max_length=max_tokens)
        return [(enc.input_ids, _shifted(enc.response_mask), True)]
    if example.kind == "code":
        return [_continuation(tokenizer, example.prompt, example.response, max_tokens)]
    context = MC_PROMPT.format(goal=example.prompt)
    return [_continuation(tokenizer, context, " " + choice, max_tokens) for choice in example.choices]


def _shifted(mask: list[bool]) -> list[bool]:
    """The first token can never be scored (nothing predicts it)."""
    return [False, *mask[1:]] if mask else mask


def _continuation(
    tokenizer, context: str, continuation: str, max_tokens: int
) -> tuple[list[int], list[bool], bool]:
    ctx = encode_text(tokenizer, context)
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    cut = len(ctx) + len(cont) > max_tokens
    if cut:
        cont = cont[: max_tokens - 1]
        ctx = ctx[len(ctx) - (max_tokens - len(cont)) :]
    return ctx + cont, _shifted([False] * len(ctx) + [True] * len(cont)), cut


# -- writing probes back out --------------------------------------------------------------------


def _example_row(example: Example) -> dict:
    """A row in a native format that ``load_examples`` reads back into the same example."""
    if example.kind == "text":
        row = {"text": example.text}
    elif example.kind == "choice":
        # PIQA's native format (the only multiple-choice format the loaders read: two choices).
        row = {
            "goal": example.prompt,
            "sol1": example.choices[0],
            "sol2": example.choices[1],
            "label": example.label,
        }
    elif example.kind == "code":
        row = {
            "prompt": example.prompt,
            "canonical_solution": example.response,
            "test": example.extra.get("test", ""),
            "entry_point": example.extra.get("entry_point", ""),
        }
    elif example.messages:
        row = {"messages": example.messages}
    else:
        row = {"prompt": example.prompt, "response": example.response}
    row["domain"] = example.domain
    return row


def probe_rows(probe_sets: Sequence[ProbeSet]) -> list[dict]:
    """All probes as JSONL rows (with ``domain`` = capability), reloadable with ``--probes FILE``."""
    return [_example_row(dataclasses.replace(e, domain=ps.name)) for ps in probe_sets for e in ps.examples]
