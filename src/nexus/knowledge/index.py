"""Build, extend and describe a knowledge index on disk (JSON + FAISS files only, no pickle).

An index directory holds:

* ``knowledge_index.faiss`` -- unit-norm vectors searched by inner product (= cosine):
  exact ``IndexFlatIP`` up to ``hnsw_threshold`` rows, ``IndexHNSWFlat`` above;
* ``knowledge_docs.json`` -- a list with one entry per index row: ``text``, ``source``,
  ``position`` (chunk number in its document), ``start``/``end`` (character offsets) and
  ``hash`` (SHA-256 of the chunk text) and ``title`` (the document's first line, embedded in
  front of each of its chunks);
* ``knowledge_meta.json`` -- embedder identity, dimension, metric, index type, chunking,
  per-document hashes, build times and the measured recall@10 against exact search.

The three files are replaced as one unit (the directory may hold other files: a release keeps
its index next to the model): a writer puts the new set in ``.knowledge_txn/``, fsyncs it and
renames it to ``.knowledge_commit/`` (the commit point), then moves each file into place and
removes the folder. A writer killed before the commit leaves the old set (the next write drops
the txn folder); killed after it, readers see each file from ``.knowledge_commit/`` where it is
still there (the new set) and the next write finishes the move. Writers hold an exclusive
``flock`` on the directory from the commit on, readers a shared one while reading. Writers also
take turns on ``.knowledge_write.lock`` from before they read the old set until their commit, so
two ``nexus index add`` runs on one index both land (the second adds to the first one's result)
while chats keep reading the old set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nexus.config import to_dict
from nexus.errors import NexusError
from nexus.knowledge.chunking import chunk_text
from nexus.knowledge.readers import read_documents
from nexus.utils import atomic_write_bytes, atomic_write_json, dir_lock, fsync_dir

log = logging.getLogger(__name__)

INDEX_FILE = "knowledge_index.faiss"
DOCS_FILE = "knowledge_docs.json"
META_FILE = "knowledge_meta.json"
FILES = (INDEX_FILE, DOCS_FILE, META_FILE)
TXN_DIR = ".knowledge_txn"  # a new file set being written: incomplete until renamed to COMMIT_DIR
COMMIT_DIR = ".knowledge_commit"  # a complete new file set, being moved into place
WRITE_LOCK = ".knowledge_write.lock"  # one writer at a time, from reading the old set to the commit
FORMAT_VERSION = 1


@dataclass
class IndexConfig:
    """How documents become an index (YAML section ``index``; CLI flags override)."""

    embedder: str = field(
        default="default",
        metadata={
            "help": "sentence-transformers model: 'default' (all-MiniLM-L6-v2), a local directory or a hub name"
        },
    )
    # 128 rather than larger: a chunk keeps to about one topic, so it ranks higher for a question
    # on that topic, and four chunks fit the chat's 512-token context budget (on the project's own
    # docs, 10 of bench_grounding's 10 questions got their answer into the context vs 7 at 200).
    chunk_tokens: int = field(
        default=128, metadata={"help": "max embedder tokens per chunk (MiniLM reads at most 256)"}
    )
    chunk_overlap: int = field(
        default=32, metadata={"help": "tokens of trailing sentences repeated in the next chunk"}
    )
    hnsw_threshold: int = field(
        default=20000, metadata={"help": "above this many rows use HNSW instead of exact flat search"}
    )
    hnsw_m: int = field(default=32, metadata={"help": "HNSW graph degree"})
    hnsw_ef_construction: int = field(default=200, metadata={"help": "HNSW build-time beam width"})
    hnsw_ef_search: int = field(default=128, metadata={"help": "HNSW query-time beam width"})
    batch_size: int = field(default=64, metadata={"help": "embedding batch size"})

    def __post_init__(self) -> None:
        if self.chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be >= 8, got {self.chunk_tokens}")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ValueError(f"chunk_overlap must be in [0, chunk_tokens), got {self.chunk_overlap}")
        for name in ("hnsw_threshold", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- FAISS helpers


def new_index(dimension: int, rows: int, config: IndexConfig):
    """An empty index of the right type for ``rows`` vectors (inner-product metric)."""
    import faiss

    if rows <= config.hnsw_threshold:
        return faiss.IndexFlatIP(dimension)
    index = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search
    return index


def index_type(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return type(index).__name__


def all_vectors(index) -> np.ndarray:
    """``(ntotal, d)`` float32 copy of every stored vector (flat and HNSW-flat store them)."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_n(0, index.ntotal)


def recall_at_k(index, *, k: int = 10, queries: int = 200, seed: int = 0) -> float:
    """Mean overlap of ``index``'s top-k with exact inner-product top-k, over sampled queries.

    Queries are normalized midpoints of two random stored vectors: near the data, but not
    stored points themselves. An exact index scores 1.0 by construction.
    """
    import faiss

    n = index.ntotal
    if n == 0:
        return 1.0
    if index_type(index) == "flat":
        return 1.0
    vectors = all_vectors(index)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, size=(2, min(queries, n)))
    q = vectors[a] + vectors[b]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = min(k, n)
    exact = faiss.IndexFlatIP(index.d)
    exact.add(vectors)
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    hits = [len(set(t.tolist()) & set(g.tolist())) / k for t, g in zip(truth, got, strict=True)]
    return float(np.mean(hits))


def write_faiss(index, path: Path) -> None:
    import faiss

    atomic_write_bytes(path, faiss.serialize_index(index).tobytes())


def read_faiss(path: Path):
    import faiss

    if not path.is_file():
        raise NexusError(f"knowledge index not found: {path}")
    try:
        return faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise NexusError(f"knowledge index {path} is corrupt: {first[:200]}") from None


# ---------------------------------------------------------------------------- reading an index


def read_index_dir(directory: str | Path) -> tuple[Any, list[dict], dict]:
    """``(faiss_index, docs, meta)`` of an index directory, checked for consistency."""
    directory = Path(directory)
    with dir_lock(directory, shared=True):
        return _read_index_files(directory, _current_files(directory))


def _current_files(directory: Path) -> dict[str, Path]:
    """Where each index file's current version is: in a commit folder a killed writer left (its
    files are newer than the ones beside it), else in ``directory``."""
    commit = directory / COMMIT_DIR
    return {name: commit / name if (commit / name).is_file() else directory / name for name in FILES}


def _read_index_files(directory: Path, files: dict[str, Path]) -> tuple[Any, list[dict], dict]:
    import json

    meta_path, docs_path = files[META_FILE], files[DOCS_FILE]
    if not files[INDEX_FILE].is_file():
        raise NexusError(f"{directory} holds no knowledge index ({INDEX_FILE} missing)")
    for path in (meta_path, docs_path):
        if not path.is_file():
            raise NexusError(f"knowledge index {directory} is incomplete: {path.name} missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        docs = json.loads(docs_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NexusError(f"knowledge index {directory} has a malformed JSON file: {exc}") from None
    if not isinstance(docs, list) or not isinstance(meta, dict):
        raise NexusError(f"knowledge index {directory}: {DOCS_FILE} must be a list and {META_FILE} a mapping")
    index = read_faiss(files[INDEX_FILE])
    if index.ntotal != len(docs):
        raise NexusError(
            f"knowledge index {directory} is inconsistent: {INDEX_FILE} has {index.ntotal} rows but "
            f"{DOCS_FILE} has {len(docs)} entries; rebuild it with `nexus index build`"
        )
    dimension = meta.get("embedder", {}).get("dimension")
    if dimension is not None and index.d != dimension:
        raise NexusError(
            f"knowledge index {directory}: vectors have dimension {index.d}, metadata says {dimension}"
        )
    return index, docs, meta


# ---------------------------------------------------------------------------- build / add


def document_title(text: str, max_chars: int = 100) -> str:
    """A document's first non-empty line (Markdown '#' stripped), as its title."""
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line and not set(line) <= set("=-~*^"):
            return line[:max_chars]
    return ""


def embedding_text(entry: dict) -> str:
    """What is embedded for a chunk: its document's title, then the chunk (a chunk deep in a
    document rarely names what the document is about; the title puts that back)."""
    title = entry.get("title", "")
    return entry["text"] if not title or entry["text"].startswith(title) else f"{title}\n{entry['text']}"


def _chunk_documents(documents, embedder, config: IndexConfig, skip_hashes: set[str], skip_docs: set[str]):
    """New chunk entries and document records, skipping known documents and chunks."""
    entries, records, skipped_docs, skipped_chunks = [], [], 0, 0
    for doc in documents:
        doc_hash = _sha256(doc.text)
        if doc_hash in skip_docs:
            skipped_docs += 1
            continue
        skip_docs.add(doc_hash)
        title = document_title(doc.text)
        chunks = chunk_text(
            doc.text,
            max_tokens=config.chunk_tokens,
            overlap_tokens=config.chunk_overlap,
            count_tokens=embedder.count_tokens,
        )
        added = 0
        for position, chunk in enumerate(chunks):
            digest = _sha256(chunk.text)
            if digest in skip_hashes:
                skipped_chunks += 1
                continue
            skip_hashes.add(digest)
            entries.append(
                {
                    "text": chunk.text,
                    "source": doc.source,
                    "position": position,
                    "start": chunk.start,
                    "end": chunk.end,
                    "hash": digest,
                    "title": title,
                }
            )
            added += 1
        records.append({"source": doc.source, "sha256": doc_hash, "chunks": added})
    return entries, records, skipped_docs, skipped_chunks


def _write(directory: Path, index, docs: list[dict], meta: dict) -> None:
    """Replace the index files of ``directory`` as one unit (see the module docstring)."""

    directory.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    txn = directory / TXN_DIR
    txn.mkdir()
    write_faiss(index, txn / INDEX_FILE)
    atomic_write_json(txn / DOCS_FILE, docs, indent=None)
    atomic_write_json(txn / META_FILE, meta)
    fsync_dir(txn)
    with dir_lock(directory):
        os.rename(txn, directory / COMMIT_DIR)
        fsync_dir(directory)
        _finish_commit(directory)


@contextmanager
def _one_writer(directory: Path) -> Iterator[None]:
    """Held by a writer from before it reads the current set until its commit (module docstring)."""
    lock = directory / WRITE_LOCK
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock.touch(exist_ok=True)
    except OSError as exc:
        raise NexusError(f"cannot write the knowledge index {directory}: {exc.strerror or exc}") from None
    with dir_lock(lock):
        yield


def _recover(directory: Path) -> None:
    """Finish what a killed writer left: a committed set goes into place, an uncommitted one goes."""
    import shutil

    with dir_lock(directory):
        _finish_commit(directory)
    shutil.rmtree(directory / TXN_DIR, ignore_errors=True)


def _finish_commit(directory: Path) -> None:
    """Move a committed file set into place (idempotent: a move killed half-way is redone)."""
    commit = directory / COMMIT_DIR
    if not commit.is_dir():
        return
    for name in FILES:
        if (commit / name).is_file():
            os.replace(commit / name, directory / name)
    fsync_dir(directory)
    commit.rmdir()
    fsync_dir(directory)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_index(
    docs: list[str | Path], out_dir: str | Path, config: IndexConfig | None = None, *, embedder=None
) -> dict:
    """Read, chunk and embed ``docs`` (files and folders) into a fresh index in ``out_dir``.

    Returns a summary: documents, chunks, index type, chunks/s, recall@10, paths.
    ``embedder`` (an :class:`~nexus.knowledge.embedder.Embedder`) overrides ``config.embedder``
    when the caller has one loaded already.
    """
    from nexus.knowledge.embedder import Embedder

    config = config or IndexConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    documents = read_documents(docs)  # before loading the embedder: bad paths fail fast
    if not documents:
        raise NexusError("the documents hold no text to index")
    embedder = embedder or Embedder(config.embedder, batch_size=config.batch_size)
    entries, records, skipped_docs, skipped_chunks = _chunk_documents(
        documents, embedder, config, set(), set()
    )
    if not entries:
        raise NexusError("the documents hold no text to index")
    embed_started = time.perf_counter()
    vectors = embedder.embed([embedding_text(e) for e in entries])
    embed_seconds = time.perf_counter() - embed_started
    index = new_index(embedder.identity.dimension, len(entries), config)
    index.add(vectors)
    recall = recall_at_k(index)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT_VERSION,
        "embedder": {
            **embedder.identity.to_dict(),
            "spec": config.embedder,
            "max_seq_length": embedder.max_seq_length,
        },
        "metric": "inner_product",
        "normalized": True,
        "index_type": index_type(index),
        "rows": index.ntotal,
        "config": to_dict(config),
        "chunking": {
            "max_tokens": config.chunk_tokens,
            "overlap_tokens": config.chunk_overlap,
            "unit": "sentence",
        },
        "documents": records,
        "built_at": _now(),
        "updated_at": _now(),
        "build_seconds": round(seconds, 3),
        "recall_at_10": recall,
    }
    with _one_writer(out_dir):
        _write(out_dir, index, entries, meta)
    log.debug(
        "indexed %d chunks from %d documents into %s (%s)",
        len(entries),
        len(records),
        out_dir,
        meta["index_type"],
    )
    return {
        "out_dir": str(out_dir),
        "documents": len(records),
        "chunks": len(entries),
        "skipped_duplicate_documents": skipped_docs,
        "skipped_duplicate_chunks": skipped_chunks,
        "index_type": meta["index_type"],
        "recall_at_10": recall,
        "seconds": round(seconds, 3),
        "chunks_per_second": round(len(entries) / max(embed_seconds, 1e-9), 1),
    }


def add_to_index(index_dir: str | Path, docs: list[str | Path], *, embedder=None) -> dict:
    """Append new documents to an existing index, embedding only the new chunks.

    Documents and chunks already present (same SHA-256) are skipped. When the index grows past
    its ``hnsw_threshold`` the stored vectors move into an HNSW index (no re-embedding).
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        read_index_dir(index_dir)  # the one-line error for a missing index
    with _one_writer(index_dir):
        return _add(index_dir, docs, embedder)


def _add(index_dir: Path, docs: list[str | Path], embedder) -> dict:
    from nexus.config import from_dict
    from nexus.knowledge.embedder import Embedder

    _recover(index_dir)
    index, entries, meta = read_index_dir(index_dir)
    documents = read_documents(docs)
    config = from_dict(IndexConfig, meta.get("config", {}), f"{index_dir / META_FILE}")
    embedder = embedder or Embedder(
        meta["embedder"].get("spec", config.embedder), batch_size=config.batch_size
    )
    if not embedder.identity.same_as(meta["embedder"]):
        raise NexusError(embedder_mismatch_message(index_dir, meta["embedder"], embedder.identity.to_dict()))
    known_chunks = {e["hash"] for e in entries}
    known_docs = {r["sha256"] for r in meta.get("documents", [])}
    started = time.perf_counter()
    new_entries, records, skipped_docs, skipped_chunks = _chunk_documents(
        documents, embedder, config, known_chunks, known_docs
    )
    if new_entries:
        vectors = embedder.embed([embedding_text(e) for e in new_entries])
        total = index.ntotal + len(new_entries)
        if index_type(index) == "flat" and total > config.hnsw_threshold:
            old = all_vectors(index)
            index = new_index(index.d, total, config)
            index.add(old)
        index.add(vectors)
        meta["documents"] = meta.get("documents", []) + [r for r in records if r["chunks"]]
        meta.update(
            index_type=index_type(index),
            rows=index.ntotal,
            updated_at=_now(),
            recall_at_10=recall_at_k(index),
        )
        _write(index_dir, index, entries + new_entries, meta)
    return {
        "out_dir": str(index_dir),
        "added_documents": sum(1 for r in records if r["chunks"]),
        "added_chunks": len(new_entries),
        "skipped_duplicate_documents": skipped_docs,
        "skipped_duplicate_chunks": skipped_chunks,
        "rows": index.ntotal,
        "index_type": index_type(index),
        "seconds": round(time.perf_counter() - started, 3),
    }


def embedder_mismatch_message(directory, recorded: dict, given: dict) -> str:
    return (
        f"knowledge index {directory} was built with embedder {recorded.get('name')} "
        f"(fingerprint {recorded.get('fingerprint')}, dimension {recorded.get('dimension')}) but is being "
        f"queried with {given.get('name')} (fingerprint {given.get('fingerprint')}, dimension "
        f"{given.get('dimension')}); vectors from different embedders are not comparable: rebuild the "
        "index with this embedder or query it with the one it was built with"
    )


def index_info(index_dir: str | Path, *, measure_recall: bool = True) -> dict:
    """What an index holds: rows, documents, embedder, type, chunking, recall@10 (re-measured)."""
    index_dir = Path(index_dir)
    index, docs, meta = read_index_dir(index_dir)
    sources = sorted({d.get("source") for d in docs})
    info = {
        "directory": str(index_dir),
        "rows": index.ntotal,
        "documents": len(sources),
        "embedder": meta.get("embedder", {}),
        "dimension": index.d,
        "metric": meta.get("metric"),
        "index_type": index_type(index),
        "chunking": meta.get("chunking", {}),
        "built_at": meta.get("built_at"),
        "updated_at": meta.get("updated_at"),
        "build_seconds": meta.get("build_seconds"),
        "size_bytes": _current_files(index_dir)[INDEX_FILE].stat().st_size,
    }
    if index_type(index) == "hnsw":
        info["hnsw"] = {"m": meta.get("config", {}).get("hnsw_m"), "ef_search": index.hnsw.efSearch}
    info["recall_at_10"] = recall_at_k(index) if measure_recall else meta.get("recall_at_10")
    return info
