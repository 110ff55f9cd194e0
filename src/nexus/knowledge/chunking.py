"""Sentence-aware, token-budgeted chunking with overlap.

A text is cut into *units* (sentences; paragraph breaks and Markdown structure also end a
unit; a unit longer than the budget is cut between words). Units are packed greedily into
chunks of at most ``max_tokens`` tokens; each new chunk starts with the trailing units of the
previous one worth at most ``overlap_tokens`` tokens, so a fact that straddles a boundary is
whole in at least one chunk. Chunks are spans of the original text (formatting kept).

Token counts come from a ``count_tokens(list[str]) -> list[int]`` callable (the embedder's
tokenizer in practice), so these functions stay pure and testable with any counter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CountTokens = Callable[[Sequence[str]], list[int]]

# A unit ends after . ! ? (and closing quotes/brackets) followed by space, at a blank line,
# or before a line that starts Markdown/rST structure (heading, list item, code fence).
_BOUNDARY = re.compile(
    r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=[ \t]*(?:#|[-*+] |\d+[.)] |```|\.\. |={3,}|-{3,}))"
)
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets of the chunk in the source text
    end: int
    tokens: int


def split_units(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentence-like units of ``text`` (whitespace-only spans dropped)."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        spans.append((start, match.start() if match.start() > start else match.end()))
        start = match.end()
    spans.append((start, len(text)))
    # A Markdown heading is a unit of its own: cut after its line.
    split_spans = []
    for a, b in spans:
        while text.startswith("#", a) and (newline := text.find("\n", a, b)) != -1:
            split_spans.append((a, newline))
            a = newline + 1
        split_spans.append((a, b))
    result = []
    for a, b in split_spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            result.append((a, b))
    return result


def _split_long(
    text: str, span: tuple[int, int], max_tokens: int, count_tokens: CountTokens
) -> list[tuple[int, int, int]]:
    """Cut one over-long unit between words into pieces of at most ``max_tokens`` tokens."""
    a, b = span
    words = [(a + m.start(), a + m.end()) for m in _WORD.finditer(text[a:b])]
    counts = count_tokens([text[s:e] for s, e in words])
    pieces, piece_start, piece_tokens, last_end = [], None, 0, a
    for (s, e), n in zip(words, counts, strict=True):
        if piece_start is not None and piece_tokens + n > max_tokens:
            pieces.append((piece_start, last_end, piece_tokens))
            piece_start, piece_tokens = None, 0
        if piece_start is None:
            piece_start = s
        piece_tokens += n
        last_end = e
    if piece_start is not None:
        pieces.append((piece_start, last_end, piece_tokens))
    return pieces


def chunk_text(text: str, *, max_tokens: int, overlap_tokens: int, count_tokens: CountTokens) -> list[Chunk]:
    """Chunks of ``text`` (see the module docstring). ``overlap_tokens`` must be < ``max_tokens``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, max_tokens), got {overlap_tokens}")
    spans = split_units(text)
    if not spans:
        return []
    counts = count_tokens([text[a:b] for a, b in spans])
    units: list[tuple[int, int, int]] = []
    for span, n in zip(spans, counts, strict=True):
        units.extend(_split_long(text, span, max_tokens, count_tokens) if n > max_tokens else [(*span, n)])

    chunks: list[Chunk] = []
    current: list[tuple[int, int, int]] = []
    total = 0
    emitted_upto = -1  # index of the last unit included in an emitted chunk
    for i, unit in enumerate(units):
        if current and total + unit[2] > max_tokens:
            chunks.append(Chunk(text[current[0][0] : current[-1][1]], current[0][0], current[-1][1], total))
            emitted_upto = i - 1
            # Carry the tail of this chunk into the next one, within the overlap budget, and
            # never the whole chunk (the next one must move forward).
            carried: list[tuple[int, int, int]] = []
            carried_tokens = 0
            for prev in reversed(current[1:]):
                if (
                    carried_tokens + prev[2] > overlap_tokens
                    or carried_tokens + prev[2] + unit[2] > max_tokens
                ):
                    break
                carried.insert(0, prev)
                carried_tokens += prev[2]
            current, total = carried, carried_tokens
        current.append(unit)
        total += unit[2]
    if current and emitted_upto < len(units) - 1:
        chunks.append(Chunk(text[current[0][0] : current[-1][1]], current[0][0], current[-1][1], total))
    return chunks
