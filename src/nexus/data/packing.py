"""Tokenize examples into documents and pack them into fixed-length training rows.

A *document* is one example's token ids plus a per-token target mask (True where the token is
a training target: every token for ``text`` rows and for ``loss_on="all"``, only the response
tokens for ``loss_on="response"``). Documents are concatenated greedily into rows of
``seq_len`` tokens (a document longer than a row is split); each row carries:

* ``input_ids``    ``(R, L)`` token ids (pad id after the last document of the last row);
* ``position_ids`` ``(R, L)`` positions restarting at 0 at every document, which is how the
  models' attention keeps packed documents apart (transformers builds a block-diagonal causal
  mask from position resets when no attention mask is given);
* ``labels``       ``(R, L)`` the next token when position ``t`` is scored, else ``-100``:
  ``labels[t] = input_ids[t + 1]`` if token ``t + 1`` is a target of the same document.

``loss_mask = labels != -100`` marks the scored positions (KD and CE alike). Rows that hold a
*gold* document (an example whose own answer is the target, ``extra["gold"]``: the grounded RAG
rows, whose answer the teacher does not give) also carry

* ``gold``         ``(R, L)`` True at the scored positions of gold documents (``gold_mask`` in a
  batch): the trainer scores them by CE on the answer alone (``TrainSettings.gold_weight``).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nexus.data.formats import Example
from nexus.data.templates import encode_chat, encode_text
from nexus.errors import NexusError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class Document:
    ids: list[int]
    target: list[bool]
    gold: bool = False  # the example's own answer is the target (see the module docstring)


@dataclass
class PackedRows:
    """Packed rows as numpy arrays (possibly memory-mapped), see the module docstring."""

    input_ids: np.ndarray  # (R, L) int32
    position_ids: np.ndarray  # (R, L) int32
    labels: np.ndarray  # (R, L) int32, -100 where not scored
    # (R, L) bool, scored positions of gold documents; None: none (keyword-only: subclasses add fields)
    gold: np.ndarray | None = field(default=None, kw_only=True)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def scored_tokens(self, rows: np.ndarray | list[int] | None = None) -> int:
        labels = self.labels if rows is None else self.labels[np.asarray(rows)]
        return int((labels != IGNORE_INDEX).sum())

    def batch(self, rows: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """A training batch of the given rows: ``input_ids``, ``position_ids``, ``labels`` (long)
        and ``loss_mask`` (bool), each ``(B, L)``; ``gold_mask`` (bool) where rows carry ``gold``."""
        idx = np.asarray(rows, dtype=np.int64)
        labels = torch.from_numpy(np.ascontiguousarray(self.labels[idx])).long()
        out = {
            "input_ids": torch.from_numpy(np.ascontiguousarray(self.input_ids[idx])).long(),
            "position_ids": torch.from_numpy(np.ascontiguousarray(self.position_ids[idx])).long(),
            "labels": labels,
            "loss_mask": labels != IGNORE_INDEX,
        }
        if self.gold is not None:
            out["gold_mask"] = torch.from_numpy(np.ascontiguousarray(self.gold[idx])).bool()
        return out


def encode_example(
    tokenizer, example: Example, *, max_length: int | None = None, loss_on: str = "all"
) -> Document:
    """One example as a document; ``choice``/``code`` (evaluation) examples are refused."""
    if example.kind in ("choice", "code"):
        raise NexusError(
            f"{example.source}: {example.kind} rows (PIQA / HumanEval) are evaluation-only data and are never trained on"
        )
    if example.kind == "text":
        ids = encode_text(tokenizer, example.text, max_length=max_length)
        if tokenizer.eos_token_id is not None and (max_length is None or len(ids) < max_length):
            ids = [*ids, tokenizer.eos_token_id]
        return Document(ids, [True] * len(ids))
    if example.messages:
        prompt, response = example.messages[:-1], example.messages[-1]["content"]
    else:
        prompt, response = example.prompt, example.response
    if not str(response).strip():
        raise NexusError(f"{example.source}: empty response")
    enc = encode_chat(tokenizer, prompt, response, max_length=max_length)
    target = list(enc.response_mask) if loss_on == "response" else [True] * len(enc.input_ids)
    return Document(list(enc.input_ids), target, bool(example.extra.get("gold")))


def _empty_response(example: Example) -> bool:
    if example.kind in ("text", "choice", "code"):  # no response; evaluation rows are refused later
        return False
    response = example.messages[-1]["content"] if example.messages else example.response
    return not str(response or "").strip()


def encode_examples(
    tokenizer, examples: Sequence[Example], *, max_length: int | None = None, loss_on: str = "all"
) -> list[Document]:
    """:func:`encode_example` over ``examples``, skipping rows with an empty response (public
    sets have a few, e.g. Code Alpaca): one warning names how many and the first one."""
    empty = [ex for ex in examples if _empty_response(ex)]
    if empty:
        log.warning("skipped %d row(s) with an empty response (first: %s)", len(empty), empty[0].source)
    kept = [ex for ex in examples if not _empty_response(ex)]
    if examples and not kept:
        raise NexusError(f"every row has an empty response (first: {empty[0].source})")
    return [encode_example(tokenizer, ex, max_length=max_length, loss_on=loss_on) for ex in kept]


def _labels(ids: list[int], target: list[bool]) -> list[int]:
    """Per-position labels of one document piece: the next token where it is a target."""
    return [ids[t + 1] if target[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


def _fit_rows(docs: list[Document], seq_len: int) -> list[list[Document]]:
    """Best-fit decreasing: each document goes, longest first, into the open row with the least
    room that holds it whole, else a new row. A document longer than a row is first cut into
    row-sized pieces (a last piece of one token is dropped: it has nothing to score)."""
    pieces: list[Document] = []
    for doc in docs:
        for start in range(0, len(doc.ids), seq_len):
            piece = Document(doc.ids[start : start + seq_len], doc.target[start : start + seq_len], doc.gold)
            if len(piece.ids) >= 2 or len(doc.ids) == 1:
                pieces.append(piece)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i].ids))  # stable: ties keep input order
    rows: list[list[Document]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        piece = pieces[i]
        at = bisect.bisect_left(rooms, (len(piece.ids), -1))
        if at < len(rooms):
            room, row = rooms.pop(at)
        else:
            room, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(piece)
        if room - len(piece.ids) > 0:
            bisect.insort(rooms, (room - len(piece.ids), row))
    return rows


def pack_documents(
    docs: list[Document], seq_len: int, pad_id: int, *, keep_whole: bool = False
) -> PackedRows:
    """Pack documents into rows of ``seq_len`` (see the module docstring).

    By default documents are concatenated in order and one that overflows a row continues in
    the next, so no row space is wasted (right for plain text). ``keep_whole=True`` never splits
    a document that fits in one row (best-fit decreasing, some padding): an instruction whose
    answer lands in another row than its prompt would teach answering without the question
    (or, for a RAG row, without the retrieved context).
    """
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    if keep_whole:
        groups = _fit_rows(docs, seq_len)
    else:
        groups, row, used = [], [], 0
        for doc in docs:
            start = 0
            while start < len(doc.ids):
                room = seq_len - used
                if room < 2 and start + room < len(doc.ids):
                    groups.append(row)  # do not start a document with a single token at the end of a row
                    row, used = [], 0
                    continue
                piece = Document(doc.ids[start : start + room], doc.target[start : start + room], doc.gold)
                row.append(piece)
                used += len(piece.ids)
                start += len(piece.ids)
                if used >= seq_len:
                    groups.append(row)
                    row, used = [], 0
        if row:
            groups.append(row)
    groups = [g for g in groups if g]
    if not groups:
        raise NexusError("the dataset is empty: no tokens to train on")
    ids_out = np.full((len(groups), seq_len), pad_id, dtype=np.int32)
    pos_out = np.zeros((len(groups), seq_len), dtype=np.int32)
    lab_out = np.full((len(groups), seq_len), IGNORE_INDEX, dtype=np.int32)
    gold_out = np.zeros((len(groups), seq_len), dtype=bool) if any(d.gold for d in docs) else None
    for r, pieces in enumerate(groups):
        at = 0
        for piece in pieces:
            n = len(piece.ids)
            ids_out[r, at : at + n] = piece.ids
            pos_out[r, at : at + n] = np.arange(n)
            lab_out[r, at : at + n] = _labels(piece.ids, piece.target)
            if piece.gold:
                gold_out[r, at : at + n] = lab_out[r, at : at + n] != IGNORE_INDEX
            at += n
        # Padding forms its own "document" (positions from 0) so it never attends to real text.
        pos_out[r, at:] = np.arange(seq_len - at)
    return PackedRows(ids_out, pos_out, lab_out, gold=gold_out)


def split_heldout(
    docs: list[Document], fraction: float, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Deterministic train / held-out split of documents by a hash of their content and ``seed``.

    At least one document is held out when ``fraction > 0`` and there are two or more.
    """
    if fraction <= 0 or len(docs) < 2:
        return docs, []

    def key(doc: Document) -> float:
        digest = hashlib.sha256(f"{seed}:{doc.ids[:64]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    keys = [key(d) for d in docs]
    heldout = {i for i, k in enumerate(keys) if k < fraction}
    if not heldout:
        heldout = {int(np.argmin(keys))}
    if len(heldout) == len(docs):
        heldout.discard(int(np.argmax(keys)))
    train = [d for i, d in enumerate(docs) if i not in heldout]
    held = [d for i, d in enumerate(docs) if i in heldout]
    return train, held
