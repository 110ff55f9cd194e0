"""Readers for the native formats of public datasets, normalized to :class:`Example`.

Row formats are recognized by their keys, so a user's own download of the same public set
works unchanged:

=====================  ======================================================  ==========
keys                   format                                                  domain
=====================  ======================================================  ==========
question, answer       GSM8K (answer ends with ``#### N``)                     math
instruction, output    Code Alpaca (optional ``input``)                        code
instruction, instances Self-Instruct user-oriented (first instance used)       chat
goal, sol1, sol2       PIQA (``label`` 0/1)                                     chat
prompt, test,          HumanEval (``entry_point``, ``canonical_solution``)     code
entry_point
messages               chat transcript ``[{"role", "content"}, ...]``          (row/file)
prompt, response       instruction pair                                        (row/file)
text                   plain text                                              (row/file)
=====================  ======================================================  ==========

A row may carry its own ``domain``; otherwise the format's domain (or the caller's default) is used.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nexus.errors import NexusError

DOMAINS = ("code", "math", "chat")
# The row formats example_from_row recognizes, as Example.format (nexus.data.splits keys on them).
ROW_FORMATS = ("gsm8k", "piqa", "humaneval", "self_instruct", "alpaca", "messages", "prompt_response", "text")
GSM8K_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


@dataclass
class Example:
    """One normalized example.

    ``kind``: ``text`` (score/train on all of ``text``), ``chat`` (``prompt`` -> ``response``,
    or ``messages``), ``choice`` (``prompt`` + one of ``choices``, ``label`` is the right one),
    ``code`` (HumanEval: ``prompt`` to complete, ``test`` + ``entry_point`` in ``extra``).
    """

    kind: Literal["text", "chat", "choice", "code"]
    source: str  # "file:line", for error messages and audits
    domain: str | None = None
    text: str = ""
    prompt: str = ""
    response: str = ""
    messages: list[dict[str, str]] | None = None
    choices: list[str] = field(default_factory=list)
    label: int = -1
    answer: str | None = None  # the reference final answer (GSM8K number, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str | None = None  # the recognized row format (see ROW_FORMATS); None: not read from a row


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from a JSONL file, a JSON array file, or their ``.gz``.

    For a JSON array the "line number" is the 1-based row index.
    """
    path = Path(path)
    if not path.is_file():
        raise NexusError(f"data file not found: {path}")
    try:
        with _open_text(path) as f:
            head = f.read(1 << 16).lstrip()
            f.seek(0)
            if head.startswith("["):
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as exc:
                    raise NexusError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
                for index, row in enumerate(rows, 1):
                    if not isinstance(row, dict):
                        raise NexusError(f"{path}: row {index} is not a JSON object")
                    yield index, row
                return
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise NexusError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise NexusError(f"{path}:{line_no}: expected a JSON object per line")
                yield line_no, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise NexusError(f"cannot read {path}: {exc}") from None


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str, fmt: str) -> None:
    for key in keys:
        if key not in row or row[key] is None:
            raise NexusError(f"{where}: {fmt} row is missing field '{key}'")


def example_from_row(row: dict[str, Any], where: str, default_domain: str | None = None) -> Example:
    """Normalize one row (see the module docstring for the recognized formats)."""
    domain = row.get("domain", default_domain)
    if "question" in row and "answer" in row:  # GSM8K
        match = GSM8K_ANSWER.search(str(row["answer"]))
        return Example(
            "chat",
            where,
            domain or "math",
            prompt=str(row["question"]),
            response=str(row["answer"]),
            answer=match.group(1).replace(",", "") if match else None,
            format="gsm8k",
        )
    if "goal" in row or "sol1" in row:  # PIQA
        _require(row, ("goal", "sol1", "sol2", "label"), where, "PIQA")
        return Example(
            "choice",
            where,
            domain or "chat",
            prompt=str(row["goal"]),
            choices=[str(row["sol1"]), str(row["sol2"])],
            label=int(row["label"]),
            format="piqa",
        )
    if "entry_point" in row or "test" in row and "prompt" in row:  # HumanEval
        _require(row, ("prompt", "test", "entry_point"), where, "HumanEval")
        return Example(
            "code",
            where,
            domain or "code",
            prompt=str(row["prompt"]),
            response=str(row.get("canonical_solution") or ""),
            extra={"test": row["test"], "entry_point": row["entry_point"], "task_id": row.get("task_id")},
            format="humaneval",
        )
    if "instances" in row:  # Self-Instruct user-oriented
        _require(row, ("instruction",), where, "Self-Instruct")
        instances = row["instances"] or [{}]
        first = instances[0] if isinstance(instances[0], dict) else {}
        prompt = str(row["instruction"])
        if first.get("input"):
            prompt += "\n\n" + str(first["input"])
        return Example(
            "chat",
            where,
            domain or "chat",
            prompt=prompt,
            response=str(first.get("output", "")),
            format="self_instruct",
        )
    if "instruction" in row:  # Code Alpaca / Alpaca
        _require(row, ("instruction", "output"), where, "Alpaca-style")
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt += "\n\n" + str(row["input"])
        return Example(
            "chat", where, domain or "code", prompt=prompt, response=str(row["output"]), format="alpaca"
        )
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise NexusError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
        return Example("chat", where, domain, messages=messages, format="messages")
    if "prompt" in row and "response" in row:
        return Example(
            "chat",
            where,
            domain,
            prompt=str(row["prompt"]),
            response=str(row["response"]),
            format="prompt_response",
        )
    if "text" in row:
        return Example("text", where, domain, text=str(row["text"]), format="text")
    raise NexusError(
        f"{where}: unrecognized row with fields {sorted(row)}; expected text, prompt/response, messages, "
        "or a GSM8K / Code Alpaca / Self-Instruct / PIQA / HumanEval row"
    )


def load_examples(
    path: str | Path,
    *,
    domain: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Read every row of ``path`` (JSONL / JSON / .gz) as :class:`Example`; text files become one
    ``text`` example per blank-line-separated block."""
    path = Path(path)
    if path.suffix in (".txt", ".md") and path.is_file():
        blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
        examples = [Example("text", f"{path}:{i}", domain, text=b) for i, b in enumerate(blocks, 1)]
    else:
        examples = []
        for line_no, row in read_rows(path):
            examples.append(example_from_row(row, f"{path}:{line_no}", domain))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise NexusError(f"{path} holds no examples")
    return examples[:limit] if limit is not None else examples
