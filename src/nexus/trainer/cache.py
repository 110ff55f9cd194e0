"""Teacher cache: run the teacher once, store top-k log-probs (+ tail mass, + anchor states).

Layout of ``<root>/<key>/`` (``key`` = hash of teacher fingerprint, data key, k, temperature and
anchored layers), per split (``train``, ``heldout``), one memory-mapped ``.npy`` per array, one
entry per *scored* token, rows in order (``offsets[r]:offsets[r+1]`` are row ``r``'s tokens)::

    {split}_offsets.npy     (R + 1,) int64
    {split}_topk_logp.npy   (N, K)   float16   teacher log-probs, sorted descending
    {split}_topk_idx.npy    (N, K)   uint16 when the vocabulary fits, else int32
    {split}_tail_logp.npy   (N,)     float32   log(1 - sum of the float16 top-k probabilities)
    {split}_states_L{l}.npy (N, H)   float16   output of teacher layer l (only with anchoring)
    progress.json           rows done per split (the build resumes from here)
    meta.json               written last: the cache is complete when it exists

The arrays are preallocated at their final size and filled block by block; ``progress.json`` is
replaced atomically after each block is flushed, so a build killed at any moment resumes at the
last recorded block and never trusts unflushed data.

Temperatures: the ``train`` split holds the teacher at the training temperature ``T`` (the KD
loss compares it with the student at ``T``); every other split (``heldout``) holds it at T=1, so
the held-out KL of a cached teacher is the same quantity as a live teacher's (KL at T=1 on the
``K + 1`` bins). ``meta.json`` records each split's temperature (``split_temperature``).

Consistency: the tail is computed from the *float16-rounded* top-k, and :class:`CachedTeacherSource`
renormalizes the ``K + 1`` bins in float32 on load, so the teacher distribution the loss and the
evaluation see sums to one.

The teacher fingerprint hashes every weight file whole; the digests are memoized by (path, size,
mtime) in ``<NEXUS_CACHE_DIR>/file_hashes.json`` so a multi-GB teacher is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nexus.data.packing import IGNORE_INDEX, PackedRows
from nexus.errors import NexusError
from nexus.trainer.divergence import _log1mexp
from nexus.trainer.fused import CachedTeacher, vocab_chunk
from nexus.trainer.teacher import LiveTeacherSource, TeacherTargets
from nexus.utils import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

# 2: the tail is computed from the float16 top-k, held-out splits are stored at T=1 and the
# teacher fingerprint covers whole weight files (version 1 caches are rebuilt under a new key).
CACHE_VERSION = 2


def default_hash_memo() -> Path:
    """``<NEXUS_CACHE_DIR or ~/.cache/nexus>/file_hashes.json``."""
    return Path(os.environ.get("NEXUS_CACHE_DIR", Path.home() / ".cache" / "nexus")) / "file_hashes.json"


def memoized_sha256(path: str | Path, memo: str | Path | None) -> str:
    """:func:`~nexus.utils.sha256_file` of ``path``, remembered in the JSON file ``memo`` under
    (resolved path, size, mtime_ns): an unchanged file is not read again. ``memo=None`` hashes
    without memo; an unreadable or unwritable memo only costs the rehash."""
    path = Path(path).resolve()
    if memo is None:
        return sha256_file(path)
    memo = Path(memo)
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    try:
        entries = json.loads(memo.read_text())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entry = entries.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    entries = {p: e for p, e in entries.items() if Path(p).exists()}  # forget removed files
    entries[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo, entries)
    except OSError as exc:
        log.warning("could not record the hash of %s in %s: %s", path, memo, exc)
    return digest


_DEFAULT_MEMO = object()


def teacher_fingerprint(model_dir: str | Path, *, memo: str | Path | None | object = _DEFAULT_MEMO) -> str:
    """Hash of a model directory's config and weight files (each ``*.safetensors`` hashed whole).

    ``memo``: the JSON file remembering weight digests by (path, size, mtime_ns) (default
    :func:`default_hash_memo`; None: no memo)."""
    if memo is _DEFAULT_MEMO:
        memo = default_hash_memo()
    root = Path(model_dir)
    digest = hashlib.sha256()
    config = root / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for file in sorted(root.glob("*.safetensors")):
        digest.update(f"{file.name}:{file.stat().st_size}:{memoized_sha256(file, memo)}".encode())
    return digest.hexdigest()[:16]


def cache_key(teacher_id: str, data_key: str, k: int, temperature: float, layers: list[int]) -> str:
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "teacher": teacher_id,
            "data": data_key,
            "k": k,
            "T": temperature,
            "layers": sorted(layers),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type holding every token id."""
    if vocab_size <= np.iinfo(np.uint8).max + 1:
        return np.dtype(np.uint8)
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _row_offsets(rows: PackedRows) -> np.ndarray:
    counts = (np.asarray(rows.labels) != IGNORE_INDEX).sum(axis=1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class TeacherCache:
    """A complete (or in-progress) cache directory; see the module docstring."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @property
    def complete(self) -> bool:
        return (self.dir / "meta.json").is_file()

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    def check(self, *, teacher_id: str, data_key: str, k: int, temperature: float, layers: list[int]) -> None:
        """Refuse a cache built for another teacher, data, k, temperature or layer set."""
        meta = self.meta
        wanted = {
            "teacher": teacher_id,
            "data": data_key,
            "k": k,
            "temperature": temperature,
            "layers": sorted(layers),
        }
        for name, value in wanted.items():
            if name == "layers" and set(value) <= set(meta.get("layers", [])):
                continue
            if meta.get(name) != value:
                raise NexusError(
                    f"teacher cache {self.dir} was built for {name} {meta.get(name)!r}, not {value!r} "
                    "(another teacher or data); rebuild it with --cache-teacher or remove --teacher-cache"
                )

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.dir / name, mmap_mode="r")

    def source(self, split: str) -> CachedTeacherSource:
        return CachedTeacherSource(self, split)


class CachedTeacherSource:
    """Teacher targets for a batch read from the cache (no teacher forward)."""

    def __init__(self, cache: TeacherCache, split: str):
        self.cache = cache
        self.split = split
        self.offsets = cache._load(f"{split}_offsets.npy")
        self.topk_logp = cache._load(f"{split}_topk_logp.npy")
        self.topk_idx = cache._load(f"{split}_topk_idx.npy")
        self.tail = cache._load(f"{split}_tail_logp.npy")
        meta = cache.meta
        # the temperature of this split's log-probs (caches without the field: every split at T)
        self.temperature = float(meta.get("split_temperature", {}).get(split, meta["temperature"]))
        self.layers = list(meta.get("layers", []))
        self.states = {layer: cache._load(f"{split}_states_L{layer}.npy") for layer in self.layers}

    def heldout(self) -> CachedTeacherSource:
        return CachedTeacherSource(self.cache, "heldout")

    def __call__(self, batch: dict[str, torch.Tensor], rows: np.ndarray):
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in np.asarray(rows)]

        def gather(array: np.ndarray) -> np.ndarray:
            return np.concatenate([array[a:b] for a, b in spans]) if spans else array[:0]

        device = batch["input_ids"].device
        n = int(batch["loss_mask"].sum())
        logp = torch.from_numpy(gather(self.topk_logp)).to(device)
        if logp.shape[0] != n:
            raise NexusError(
                f"teacher cache {self.cache.dir} does not match the data ({logp.shape[0]} cached tokens, {n} scored)"
            )
        idx = torch.from_numpy(gather(self.topk_idx).astype(np.int64)).to(device)
        tail = torch.from_numpy(gather(self.tail)).to(device)
        logp, tail = normalize_bins(logp, tail)
        states = {layer: torch.from_numpy(gather(a)).to(device) for layer, a in self.states.items()}
        return TeacherTargets(CachedTeacher(logp, idx, tail), states)


def normalize_bins(topk_logp: torch.Tensor, tail_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``K + 1`` cached bins (``(N, K)`` top-k, ``(N,)`` tail log-probs) shifted in float32 so
    their probabilities sum to one (the float16 rounding of the top-k, or an older cache's tail
    computed before it, leaves them off by up to ~1e-3)."""
    logp, tail = topk_logp.float(), tail_logp.float()
    norm = torch.logaddexp(torch.logsumexp(logp, dim=-1), tail)  # (N,)
    return logp - norm[:, None], tail - norm


@torch.no_grad()
def build_teacher_cache(
    directory: str | Path,
    teacher,
    splits: dict[str, PackedRows],
    *,
    teacher_id: str,
    data_key: str,
    k: int,
    temperature: float = 1.0,
    layers: list[int] | None = None,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    progress=None,
) -> TeacherCache:
    """Fill ``directory`` (resuming a partial build); returns the complete cache.

    ``teacher``: a causal LM (cast to ``dtype`` for the forward); ``progress(done_rows, total_rows)``
    is called after each block. The ``train`` split is stored at ``temperature``, every other split
    at T=1 (see the module docstring).
    """
    directory = Path(directory)
    cache = TeacherCache(directory)
    if cache.complete:
        return cache
    layers = sorted(set(layers or []))
    directory.mkdir(parents=True, exist_ok=True)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    hidden = teacher.config.hidden_size
    if k > vocab:
        raise NexusError(f"topk {k} is larger than the vocabulary ({vocab})")
    source = LiveTeacherSource(teacher, layers=layers, dtype=dtype)
    progress_file = directory / "progress.json"
    done = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    total_rows = sum(len(r) for r in splits.values())
    finished = sum(min(done.get(s, 0), len(r)) for s, r in splits.items())
    split_temperature = {s: (float(temperature) if s == "train" else 1.0) for s in splits}
    for split, rows in splits.items():
        offsets = _row_offsets(rows)
        n_tok = int(offsets[-1])
        np.save(directory / f"{split}_offsets.npy", offsets)

        def open_array(name: str, shape: tuple, dt, split=split):
            path = directory / f"{split}_{name}.npy"
            mode = "r+" if path.is_file() and done.get(split, 0) > 0 else "w+"
            return np.lib.format.open_memmap(path, mode=mode, dtype=dt, shape=shape)

        arrays = {
            "topk_logp": open_array("topk_logp", (n_tok, k), np.float16),
            "topk_idx": open_array("topk_idx", (n_tok, k), index_dtype(vocab)),
            "tail_logp": open_array("tail_logp", (n_tok,), np.float32),
        }
        for layer in layers:
            arrays[f"states_L{layer}"] = open_array(f"states_L{layer}", (n_tok, hidden), np.float16)
        start_row = done.get(split, 0)
        for start in range(start_row, len(rows), batch_size):
            idx = np.arange(start, min(len(rows), start + batch_size))
            batch = {key: v.to(device) for key, v in rows.batch(idx).items()}
            targets = source(batch, idx)
            a, b = int(offsets[idx[0]]), int(offsets[idx[-1] + 1])
            t = targets.target
            chunk = vocab_chunk(1024, vocab)
            for c in range(0, b - a, chunk):
                e = min(b - a, c + chunk)
                logp = F.log_softmax(t.logits(c, e).float() / split_temperature[split], dim=-1)
                values, ids = logp.topk(k, dim=-1)
                values = values.to(torch.float16)  # the tail from what is stored: the bins sum to ~1
                arrays["topk_logp"][a + c : a + e] = values.cpu().numpy()
                arrays["topk_idx"][a + c : a + e] = ids.cpu().numpy().astype(arrays["topk_idx"].dtype)
                tail = _log1mexp(torch.logsumexp(values.float(), -1))
                arrays["tail_logp"][a + c : a + e] = tail.cpu().numpy()
            for layer in layers:
                arrays[f"states_L{layer}"][a:b] = targets.states[layer].to(torch.float16).cpu().numpy()
            for array in arrays.values():
                array.flush()
            done[split] = int(idx[-1]) + 1
            atomic_write_json(progress_file, done)
            finished += len(idx)
            if progress is not None:
                progress(finished, total_rows)
        del arrays
    if source.capture is not None:
        source.capture.remove()
    atomic_write_json(
        directory / "meta.json",
        {
            "version": CACHE_VERSION,
            "teacher": teacher_id,
            "data": data_key,
            "k": k,
            "temperature": temperature,
            "split_temperature": split_temperature,
            "layers": layers,
            "vocab_size": vocab,
            "splits": {s: int(_row_offsets(r)[-1]) for s, r in splits.items()},
        },
    )
    return cache


def prepare_teacher_cache(
    directory: Path,
    teacher,
    splits: dict[str, PackedRows],
    *,
    teacher_id: str,
    data_key: str,
    k: int,
    temperature: float,
    layers: list[int],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    dist,
) -> tuple[TeacherCache, dict]:
    """The complete, checked cache in ``directory``: built (resumed) by rank 0 if needed while the
    other ranks wait. Returns it and ``{"build_seconds": ... (when built here), "dir": ...}``."""
    cache = TeacherCache(directory)
    info: dict = {}
    if not cache.complete:
        if not dist.is_main:
            dist.barrier()
        else:
            teacher.to(device)
            t0 = time.perf_counter()
            build_teacher_cache(
                directory,
                teacher,
                splits,
                teacher_id=teacher_id,
                data_key=data_key,
                k=k,
                temperature=temperature,
                layers=layers,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
            )
            info["build_seconds"] = round(time.perf_counter() - t0, 2)
            dist.barrier()
    cache.check(teacher_id=teacher_id, data_key=data_key, k=k, temperature=temperature, layers=layers)
    return cache, {**info, "dir": str(directory)}
