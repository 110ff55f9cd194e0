"""Training corpora for the training phases: sources -> examples -> packed rows, cached on disk.

A source is one of:

* ``builtin`` -- the offline default corpus of :mod:`nexus.data.builtin` (stdlib Python code,
  generated math with worked answers, and the teacher's own greedy answers to built-in chat
  prompts); ``builtin:code=200,math=400,chat=60`` sets the counts, ``rag=N`` adds N
  retrieval-grounded answers in the chat's RAG layout (:mod:`nexus.data.grounded`), ``general=N``
  the teacher's sampled answers to N diverse everyday prompts, ``docs=N`` N blocks of the
  interpreter's reference docs (:mod:`nexus.data.general`), ``copy=N`` N repeated random runs
  of words that restore a pruned student's copying (:mod:`nexus.data.copying`) and ``codechat=N``
  the teacher's greedy answers to N requests for a standard-library function given its header
  and docstring (:func:`nexus.data.builtin.code_request_examples`; these five are 0 unless set);
* a file: JSONL / JSON / ``.gz`` in any format :func:`nexus.data.load_examples` reads, or a
  ``.txt`` / ``.md`` text file (blank-line separated blocks);
* a directory: every such file in it, sorted;
* ``hf:NAME[:SPLIT]`` -- a Hugging Face dataset by name (or a local path), through the
  ``datasets`` library when installed; its rows go through the same format detection.

Evaluation-only rows (PIQA, HumanEval) are refused, and the evaluation split of the sets that
serve both sides (GSM8K, Code Alpaca, Self-Instruct; :mod:`nexus.data.splits`) is dropped from
every file and hub source, so the benchmark's items are never trained on. :func:`build_corpus` tokenizes, splits a
held-out part by document, packs both parts and stores them as ``.npy`` files under a cache
directory keyed by the sources' content, the tokenizer, the packing options and (for the
built-in chat part) the teacher, so a second run memory-maps them instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexus.data.formats import Example, example_from_row, load_examples
from nexus.data.hub import is_hf_source, load_hf_dataset, parse_hf_source
from nexus.data.packing import PackedRows, encode_examples, pack_documents, split_heldout
from nexus.data.splits import without_eval_rows
from nexus.errors import NexusError
from nexus.utils import atomic_write_json, make_temp_dir

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".gz", ".txt", ".md")
BUILTIN_DEFAULTS = {
    "code": 200,
    "math": 400,
    "chat": 60,
    "rag": 0,
    "general": 0,
    "docs": 0,
    "copy": 0,
    "codechat": 0,
}
# How the teacher writes the ``general`` rows: sampled (diverse text from its own distribution),
# long enough for a paragraph; batched because generation is the cost of these rows.
GENERAL_SAMPLING = {
    "temperature": 0.8,
    "top_k": 50,
    "top_p": 0.95,
    "max_new_tokens": 192,
    "batch_size": 64,
}
CACHE_VERSION = 3  # 2: evaluation-split rows are dropped (nexus.data.splits); 3: gold rows, focused RAG rows


def parse_builtin(source: str) -> dict[str, int]:
    """Counts of a ``builtin[:code=N,math=N,chat=N]`` source."""
    counts = dict(BUILTIN_DEFAULTS)
    _, _, spec = source.partition(":")
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in counts or not value.isdigit():
            raise NexusError(
                f"bad builtin data spec {source!r}: expected e.g. "
                "builtin:code=200,math=400,chat=60,rag=600,general=800,docs=300,copy=600,codechat=200"
            )
        counts[key] = int(value)
    from nexus.data.general import general_prompt_count

    if counts["general"] > (most := general_prompt_count()):
        raise NexusError(
            f"bad builtin data spec {source!r}: general={counts['general']}, but there are "
            f"{most} distinct general prompts"
        )
    return counts


def _source_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
        if not files:
            raise NexusError(f"data directory {path} holds no data files ({', '.join(DATA_SUFFIXES)})")
        return files
    if path.is_file():
        return [path]
    raise NexusError(
        f"data not found: {source} (no such file or directory; use 'builtin' for the built-in corpus)"
    )


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}".encode())
    with open(path, "rb") as f:  # head + tail: cheap, catches edits of real data files
        digest.update(f.read(1 << 20))
        if stat.st_size > 1 << 20:
            f.seek(max(0, stat.st_size - (1 << 20)))
            digest.update(f.read())
    return digest.hexdigest()


def source_fingerprint(source: str, teacher_id: str | None = None) -> str:
    """Identity of a source's content (files) or definition (builtin, with the teacher answering)."""
    if source.startswith("builtin"):
        counts = parse_builtin(source)
        for extra in ("general", "docs", "copy"):  # absent when unused: older corpus keys stay valid
            if not counts[extra]:
                del counts[extra]
        if counts.get("general"):
            counts["general_sampling"] = GENERAL_SAMPLING
        return f"{source}|{json.dumps(counts, sort_keys=True)}|teacher={teacher_id}"
    if is_hf_source(source):
        return source
    return "|".join(f"{p}:{_file_fingerprint(p)}" for p in _source_files(source))


def _hf_examples(source: str, limit: int | None) -> list[Example]:
    name, split = parse_hf_source(source)
    ds = load_hf_dataset(name, split=split, subject=source)
    examples = []
    for i, row in enumerate(ds):
        examples.append(example_from_row(dict(row), f"{name}:{i + 1}"))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def load_source(
    source: str,
    *,
    teacher=None,
    tokenizer=None,
    seed: int = 0,
    limit: int | None = None,
    chat_answers: bool = True,
) -> list[Example]:
    """Examples of one source (see the module docstring), without evaluation-split rows;
    ``builtin`` needs the teacher for chat, unless ``chat_answers`` is False (prompts only, as the
    benchmark's overlap check reads them)."""
    if source.startswith("builtin"):
        from nexus.data import builtin, general

        counts = parse_builtin(source)
        examples = builtin.python_source_snippets(counts["code"], seed)
        examples += builtin.arithmetic_word_problems(counts["math"], seed)
        # prompts the teacher answers greedily: project-written chat prompts, stdlib code requests
        answered = (
            ("chat", builtin.chat_prompt_examples, {}),
            ("codechat", builtin.code_request_examples, {"max_new_tokens": 160, "batch_size": 16}),
        )
        for key, prompts, generation in answered:
            if not counts[key]:
                continue
            requests = prompts(counts[key], seed)
            if not chat_answers:
                examples += requests
            elif teacher is None or tokenizer is None:
                raise NexusError(f"the built-in {key} data needs the teacher to answer its prompts")
            else:
                examples += builtin.teacher_answers(teacher, tokenizer, requests, **generation)
        if counts["general"] and not chat_answers:
            examples += general.general_prompt_examples(counts["general"], seed)
        elif counts["general"]:
            if teacher is None or tokenizer is None:
                raise NexusError("the built-in general data needs the teacher to answer its prompts")
            examples += _general_answers(counts["general"], teacher, tokenizer, seed)
        examples += general.pydoc_blocks(counts["docs"], seed)
        if counts["rag"]:
            from nexus.data.grounded import grounded_qa_examples

            examples += grounded_qa_examples(counts["rag"], seed)
        if counts["copy"] and tokenizer is not None:
            from nexus.data.copying import copy_examples

            examples += copy_examples(counts["copy"], tokenizer, seed)
        elif counts["copy"] and chat_answers:  # a prompts-only read has no use for them
            raise NexusError("the built-in copy rows need the tokenizer (they are drawn from its words)")
        return examples
    if is_hf_source(source):
        examples = _hf_examples(source, limit)
    else:
        examples = []
        for path in _source_files(source):
            examples += load_examples(path, limit=limit)
    kept, dropped = without_eval_rows(examples)
    if dropped:
        log.info("%s: %d evaluation-split rows left out (nexus.data.splits)", source, dropped)
    return kept


def _general_answers(n: int, teacher, tokenizer, seed: int) -> list[Example]:
    """The teacher's sampled answers to ``n`` general prompts, timed in the log (the cost of them).

    A float32 teacher on the CPU generates from a bfloat16 copy: decoding is about twice as fast
    and these rows are data, not targets (the KD targets come from the teacher itself)."""
    import copy
    import time

    import torch

    from nexus.data.builtin import teacher_answers
    from nexus.data.general import general_prompt_examples

    opts = dict(GENERAL_SAMPLING)
    max_new, batch = opts.pop("max_new_tokens"), opts.pop("batch_size")
    start = time.perf_counter()
    param = next(teacher.parameters())
    if param.device.type == "cpu" and param.dtype == torch.float32:
        teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    rows = teacher_answers(
        teacher,
        tokenizer,
        general_prompt_examples(n, seed),
        max_new_tokens=max_new,
        batch_size=batch,
        sampling={**opts, "seed": seed},
    )
    log.info("builtin general: %d teacher answers ready in %.0f s", n, time.perf_counter() - start)
    return rows


@dataclass
class Corpus:
    train: PackedRows
    heldout: PackedRows | None
    key: str
    directory: Path | None


def _load_cached(directory: Path) -> Corpus | None:
    meta = directory / "meta.json"
    if not meta.is_file():
        return None

    def part(prefix: str) -> PackedRows:
        arrays = [
            np.load(directory / f"{prefix}_{n}.npy", mmap_mode="r")
            for n in ("input_ids", "position_ids", "labels")
        ]
        gold = directory / f"{prefix}_gold.npy"
        return PackedRows(*arrays, gold=np.load(gold, mmap_mode="r") if gold.is_file() else None)

    info = json.loads(meta.read_text())
    return Corpus(
        part("train"), part("heldout") if info.get("heldout_rows") else None, info["key"], directory
    )


def corpus_key(
    sources: list[str],
    *,
    tokenizer_id: str,
    teacher_id: str | None,
    seq_len: int,
    loss_on: str,
    heldout_fraction: float,
    seed: int,
    max_examples: int | None,
    seq_kd: bool = False,
) -> str:
    fields = {
        "version": CACHE_VERSION,
        "sources": [source_fingerprint(s, teacher_id) for s in sources],
        "tokenizer": tokenizer_id,
        "seq_len": seq_len,
        "loss_on": loss_on,
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "max_examples": max_examples,
    }
    if seq_kd:  # the responses are this teacher's
        fields["seq_kd_teacher"] = teacher_id
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary, special tokens and chat template."""
    vocab = tokenizer.get_vocab()
    blob = json.dumps(
        [sorted(vocab.items()), str(tokenizer.chat_template), tokenizer.eos_token, tokenizer.bos_token],
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_corpus(
    sources: list[str],
    tokenizer,
    *,
    seq_len: int,
    loss_on: str = "all",
    heldout_fraction: float = 0.05,
    seed: int = 0,
    max_examples: int | None = None,
    cache_dir: str | Path | None = None,
    teacher=None,
    teacher_id: str | None = None,
    teacher_tokenizer=None,
    seq_kd: bool = False,
) -> Corpus:
    """Tokenize and pack ``sources`` (train + held-out), reusing ``cache_dir/<key>/`` when present.

    ``teacher_tokenizer`` (default ``tokenizer``): the teacher's, for teacher-written rows
    (built-in chat answers) when the student's tokenizer differs. ``seq_kd``: sequence-level KD
    data -- every prompt -> response row gets the teacher's greedy answer as its response; rows
    without a single prompt (plain text, multi-turn messages) are left out."""
    if not sources:
        raise NexusError("no training data given")
    if loss_on not in ("all", "response"):
        raise NexusError(f"loss_on must be 'all' or 'response', not {loss_on!r}")
    key = corpus_key(
        sources,
        tokenizer_id=tokenizer_fingerprint(tokenizer),
        teacher_id=teacher_id,
        seq_len=seq_len,
        loss_on=loss_on,
        heldout_fraction=heldout_fraction,
        seed=seed,
        max_examples=max_examples,
        seq_kd=seq_kd,
    )
    directory = Path(cache_dir) / key if cache_dir is not None else None
    if directory is not None:
        cached = _load_cached(directory)
        if cached is not None:
            log.info("tokenized data: reusing %s", directory)
            return cached
    examples: list[Example] = []
    for source in sources:
        examples += load_source(source, teacher=teacher, tokenizer=teacher_tokenizer or tokenizer, seed=seed)
    if max_examples is not None:
        examples = examples[:max_examples]
    if seq_kd:
        examples = _teacher_written(examples, teacher, teacher_tokenizer or tokenizer)
    if not examples:
        raise NexusError(f"the dataset is empty: {', '.join(sources)} gave no examples")
    docs = encode_examples(tokenizer, examples, loss_on=loss_on)
    train_docs, held_docs = split_heldout(docs, heldout_fraction, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = pack_documents(train_docs, seq_len, pad)
    heldout = pack_documents(held_docs, seq_len, pad) if held_docs else None
    corpus = Corpus(train, heldout, key, directory)
    if directory is not None:
        _save(corpus, directory, len(examples))
        return _load_cached(directory) or corpus
    return corpus


def _teacher_written(examples: list[Example], teacher, tokenizer) -> list[Example]:
    """The prompt -> response rows, each response replaced by the teacher's greedy answer."""
    from dataclasses import replace

    from nexus.data.builtin import teacher_answers

    if teacher is None:
        raise NexusError("sequence-level KD (--seq-kd) needs the teacher to answer the prompts")
    rows = [replace(e) for e in examples if e.kind == "chat" and e.prompt and not e.messages]
    if not rows:
        raise NexusError("--seq-kd needs prompt -> response rows (the data has none)")
    log.info(
        "seq-kd: the teacher answers %d prompts (%d other rows left out)",
        len(rows),
        len(examples) - len(rows),
    )
    return teacher_answers(teacher, tokenizer, rows)


def _save(corpus: Corpus, directory: Path, n_examples: int) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, prefix=f".{directory.name}.")  # umask mode, not 0700
    try:
        for prefix, part in (("train", corpus.train), ("heldout", corpus.heldout)):
            if part is None:
                continue
            for name in ("input_ids", "position_ids", "labels", "gold"):
                if getattr(part, name) is not None:
                    np.save(tmp / f"{prefix}_{name}.npy", getattr(part, name))
        atomic_write_json(
            tmp / "meta.json",
            {
                "key": corpus.key,
                "examples": n_examples,
                "train_rows": len(corpus.train),
                "heldout_rows": 0 if corpus.heldout is None else len(corpus.heldout),
                "seq_len": corpus.train.seq_len,
                "train_scored_tokens": corpus.train.scored_tokens(),
            },
        )
        if directory.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
            return
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
