"""Domain-tagged instruction data for phases 3 and 4: load, check tags, pack per domain, mix by weight.

Sources are those of :mod:`nexus.data.corpus` (files, directories, ``hf:NAME``, ``builtin``).
Every example must carry one of the known domain tags (``code``, ``math``, ``chat``; the native
formats bring theirs: GSM8K -> math, Code Alpaca -> code, Self-Instruct -> chat); rows with no
tag get ``default_domain``, rows with any other tag are refused with their ``file:line``.

Each domain is tokenized (chat template, loss on response tokens only by default), split into
train / held-out documents and packed separately, so every packed row belongs to one domain.
The training rows are then drawn from the domains in proportion to the configured weights
(with replacement, seeded): ``DomainRows`` is a :class:`~nexus.data.packing.PackedRows` whose
``batch()`` also returns ``domain_ids`` ``(B,)``, which the router uses for its per-domain load
tables and the domain warm-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nexus.data.corpus import load_source
from nexus.data.formats import DOMAINS, Example
from nexus.data.packing import PackedRows, encode_examples, pack_documents, split_heldout
from nexus.errors import NexusError

log = logging.getLogger(__name__)


@dataclass
class DomainRows(PackedRows):
    """Packed rows with the domain index of each row (``domain_ids`` (R,), into ``domains``)."""

    domain_ids: np.ndarray | None = None
    domains: tuple[str, ...] = DOMAINS

    def batch(self, rows) -> dict[str, torch.Tensor]:
        out = super().batch(rows)
        idx = np.asarray(rows, dtype=np.int64)
        out["domain_ids"] = torch.from_numpy(np.asarray(self.domain_ids)[idx].astype(np.int64))
        return out


@dataclass
class DomainData:
    train: DomainRows
    heldout: DomainRows | None
    domains: tuple[str, ...]
    weights: dict[str, float]  # normalized over the domains that have data
    examples_per_domain: dict[str, int]


def check_domain_weights(weights: dict[str, float], domains: Sequence[str] = DOMAINS) -> None:
    unknown = [d for d in weights if d not in domains]
    if unknown:
        raise NexusError(f"unknown domain '{unknown[0]}' in domain weights (known: {', '.join(domains)})")
    if any(w < 0 for w in weights.values()):
        raise NexusError("domain weights must be non-negative")
    if not any(w > 0 for w in weights.values()):
        raise NexusError("domain weights are all zero: at least one domain must have a positive weight")


def tag_examples(
    examples: list[Example], default_domain: str, domains: Sequence[str] = DOMAINS
) -> list[Example]:
    """Give untagged examples ``default_domain``; refuse unknown tags (naming the row)."""
    for ex in examples:
        if ex.domain is None:
            ex.domain = default_domain
        if ex.domain not in domains:
            raise NexusError(f"{ex.source}: unknown domain tag '{ex.domain}' (known: {', '.join(domains)})")
    return examples


def load_domain_examples(
    sources: Sequence[str],
    *,
    teacher=None,
    tokenizer=None,
    seed: int = 0,
    default_domain: str = "chat",
    max_examples: int | None = None,
) -> dict[str, list[Example]]:
    """Examples of all sources grouped by domain (order of :data:`DOMAINS`)."""
    if not sources:
        raise NexusError("no training data given")
    examples: list[Example] = []
    for source in sources:
        examples += load_source(source, teacher=teacher, tokenizer=tokenizer, seed=seed)
    tag_examples(examples, default_domain)
    grouped: dict[str, list[Example]] = {d: [] for d in DOMAINS}
    for ex in examples:
        grouped[ex.domain].append(ex)
    if max_examples is not None:  # an even cap per domain keeps all domains present
        per = max(1, max_examples // max(1, sum(bool(v) for v in grouped.values())))
        grouped = {d: v[:per] for d, v in grouped.items()}
    return grouped


def _rows(parts: list[tuple[int, PackedRows]], order: np.ndarray, domains: tuple[str, ...]) -> DomainRows:
    """Concatenate per-domain rows, then take them in ``order`` (indices into the concatenation)."""
    ids = np.concatenate([p.input_ids for _, p in parts])
    pos = np.concatenate([p.position_ids for _, p in parts])
    lab = np.concatenate([p.labels for _, p in parts])
    gold = None
    if any(p.gold is not None for _, p in parts):
        gold = np.concatenate(
            [p.gold if p.gold is not None else np.zeros(p.labels.shape, bool) for _, p in parts]
        )
        gold = gold[order]
    dom = np.concatenate([np.full(len(p), d, dtype=np.int64) for d, p in parts])
    return DomainRows(ids[order], pos[order], lab[order], gold=gold, domain_ids=dom[order], domains=domains)


def build_domain_data(
    grouped: dict[str, list[Example]],
    tokenizer,
    *,
    seq_len: int,
    weights: dict[str, float],
    loss_on: str = "response",
    heldout_fraction: float = 0.05,
    rows_per_epoch: int | None = None,
    seed: int = 0,
) -> DomainData:
    """Pack each domain, then mix train rows by ``weights`` (see the module docstring).

    ``rows_per_epoch``: size of the mixed train set (default: the number of packed train rows).
    Held-out rows keep every domain's rows once (no reweighting), for per-domain evaluation.
    """
    check_domain_weights(weights)
    domains = tuple(DOMAINS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_parts: list[tuple[int, PackedRows]] = []
    held_parts: list[tuple[int, PackedRows]] = []
    counts = {}
    for d_index, domain in enumerate(domains):
        examples = grouped.get(domain) or []
        counts[domain] = len(examples)
        if not examples or weights.get(domain, 0.0) <= 0:
            if examples:
                log.info("domain %s has data but weight 0: not trained on", domain)
            elif weights.get(domain, 0.0) > 0:
                log.warning("domain %s has weight %s but no data: skipped", domain, weights[domain])
            continue
        docs = encode_examples(tokenizer, examples, loss_on=loss_on)
        train_docs, held_docs = split_heldout(docs, heldout_fraction, seed)
        train_parts.append((d_index, pack_documents(train_docs, seq_len, pad, keep_whole=True)))
        if held_docs:
            held_parts.append((d_index, pack_documents(held_docs, seq_len, pad, keep_whole=True)))
    if not train_parts:
        raise NexusError("no training data in any domain with a positive weight")
    active = {domains[d]: weights[domains[d]] for d, _ in train_parts}
    total_w = sum(active.values())
    norm = {d: w / total_w for d, w in active.items()}
    sizes = [len(p) for _, p in train_parts]
    n_rows = rows_per_epoch or sum(sizes)
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *sizes[:-1]])
    probs = np.array([norm[domains[d]] for d, _ in train_parts])
    which = rng.choice(len(train_parts), size=n_rows, p=probs)
    order = np.array([offsets[k] + rng.integers(sizes[k]) for k in which], dtype=np.int64)
    train = _rows(train_parts, order, domains)
    heldout = None
    if held_parts:
        heldout = _rows(held_parts, np.arange(sum(len(p) for _, p in held_parts)), domains)
    return DomainData(train, heldout, domains, norm, counts)
