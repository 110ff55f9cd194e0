"""Index build -> load -> retrieve with the real default embedder (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexus.errors import NexusError
from nexus.knowledge import (
    DOCS_FILE,
    INDEX_FILE,
    META_FILE,
    IndexConfig,
    KnowledgeTower,
    add_to_index,
    build_index,
    index_info,
)

RAG = Path(__file__).parent / "assets" / "rag"
SMALL_CHUNKS = IndexConfig(chunk_tokens=48, chunk_overlap=12)


@pytest.fixture(scope="module")
def embedder():
    from nexus.knowledge.embedder import Embedder

    return Embedder("default")


@pytest.fixture(scope="module")
def rag_index(tmp_path_factory, embedder) -> Path:
    out = tmp_path_factory.mktemp("rag-index")
    build_index([RAG / "docs"], out, SMALL_CHUNKS, embedder=embedder)
    return out


def questions():
    return [json.loads(line) for line in (RAG / "questions.jsonl").read_text().splitlines() if line.strip()]


def test_build_writes_json_and_faiss_only(rag_index):
    # and the writers' empty lock file (knowledge.index module docstring)
    names = sorted(p.name for p in rag_index.iterdir())
    assert names == sorted([INDEX_FILE, DOCS_FILE, META_FILE, ".knowledge_write.lock"])
    assert (rag_index / ".knowledge_write.lock").stat().st_size == 0
    docs = json.loads((rag_index / DOCS_FILE).read_text())
    meta = json.loads((rag_index / META_FILE).read_text())
    assert meta["rows"] == len(docs) > 5  # small chunks: several per document
    assert set(docs[0]) == {"text", "source", "position", "start", "end", "hash", "title"}
    assert meta["embedder"]["dimension"] == 384 and meta["metric"] == "inner_product"
    assert meta["index_type"] == "flat" and meta["chunking"]["max_tokens"] == 48
    assert not any("tracking" in d["text"] for d in docs)  # HTML <script> text is not indexed


def test_retrieve_returns_the_planted_chunk_first(embedder, tmp_path):
    # One planted fact among many similar-sounding distractor sentences, in small chunks.
    filler = " ".join(
        f"The harbour of town {i} has {i + 3} fishing boats and a market on {day}."
        for i, day in zip(range(40), ["Monday", "Tuesday", "Friday", "Sunday"] * 10, strict=True)
    )
    planted = "The lighthouse of Fennick Rock is kept by a retired pilot named Odalys Crane."
    half = len(filler) // 2
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "harbours.txt").write_text(filler[:half] + " " + planted + " " + filler[half:])
    build_index([tmp_path / "docs", RAG / "docs"], tmp_path / "idx", SMALL_CHUNKS, embedder=embedder)
    tower = KnowledgeTower.load(tmp_path / "idx", embedder=embedder)
    top = tower.retrieve("Who keeps the lighthouse of Fennick Rock?", k=5)
    assert [c.rank for c in top] == [1, 2, 3, 4, 5]
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)
    assert planted in top[0].text and top[0].source.endswith("harbours.txt")
    assert top[0].score > top[1].score + 0.1 or planted in top[1].text  # clearly ahead (or its overlap twin)


def test_fictional_questions_retrieve_their_document(rag_index, embedder):
    tower = KnowledgeTower.load(rag_index, embedder=embedder)
    for q in questions():
        top = tower.retrieve(q["question"], k=3)
        assert any(q["answer"] in c.text for c in top), (q, [c.text for c in top])
        answer_source = next(c.source for c in top if q["answer"] in c.text)
        assert top[0].source == answer_source, q


def test_context_is_thresholded_and_budgeted(rag_index, embedder):
    tower = KnowledgeTower.load(rag_index, embedder=embedder)
    context = tower.retrieve_text_context("Who founded Zephyr Lattice Laboratories?")
    assert "Marisol Quante" in context and "zephyr_labs.txt" in context
    assert tower.last_retrieved and all(c.score >= tower.threshold for c in tower.last_retrieved)
    assert tower.retrieve_text_context("How do I change a car tyre?") == ""  # nothing relevant
    small = tower.retrieve_text_context("Who founded Zephyr Lattice Laboratories?", k=10, max_tokens=80)
    assert sum(embedder.count_tokens([small])) <= 80 + 10
    assert tower.retrieve_text_context("Who founded Zephyr Lattice Laboratories?", max_tokens=5) == ""


def test_chat_session_with_nothing_relevant_answers_without_context(rag_index, embedder, tiny_llama_dir):
    """The chat counts context in the model's tokens (a HF tokenizer, which fails on an empty
    list): an off-topic question must get no context, not a crash."""
    from nexus.inference import ChatOptions, ChatSession
    from nexus.models import load_model, load_tokenizer

    model, resolved = load_model(str(tiny_llama_dir))
    tower = KnowledgeTower.load(rag_index, embedder=embedder)
    session = ChatSession(model, load_tokenizer(resolved), tower=tower, options=ChatOptions(max_new_tokens=2))
    result = session.respond("How do I change a car tyre?")
    assert result.retrieved == [] and session.last_retrieved == []
    assert session.respond(
        "Who founded Zephyr Lattice Laboratories?"
    ).retrieved  # and the related one gets some


def test_add_skips_duplicates_and_appends_new(rag_index, embedder, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(rag_index, index_dir)
    before = index_info(index_dir)["rows"]
    again = add_to_index(index_dir, [RAG / "docs"], embedder=embedder)
    assert again["added_chunks"] == 0 and again["skipped_duplicate_documents"] == 5
    assert index_info(index_dir)["rows"] == before
    new_doc = tmp_path / "new.md"
    new_doc.write_text("The lighthouse keeper of Fennick Rock is a retired pilot named Odalys Crane.")
    added = add_to_index(index_dir, [new_doc, RAG / "docs" / "veloria.md"], embedder=embedder)
    assert added["added_chunks"] == 1 and added["rows"] == before + 1
    tower = KnowledgeTower.load(index_dir, embedder=embedder)
    assert "Odalys Crane" in tower.retrieve("Who keeps the lighthouse on Fennick Rock?", 1)[0].text
    docs = json.loads((index_dir / DOCS_FILE).read_text())
    assert len({d["hash"] for d in docs}) == len(docs)


def test_add_past_threshold_switches_to_hnsw(embedder, tmp_path):
    config = IndexConfig(chunk_tokens=48, chunk_overlap=12, hnsw_threshold=12)
    summary = build_index([RAG / "docs" / "veloria.md"], tmp_path / "idx", config, embedder=embedder)
    assert summary["index_type"] == "flat"
    add_to_index(tmp_path / "idx", [RAG / "docs"], embedder=embedder)
    info = index_info(tmp_path / "idx")
    assert info["index_type"] == "hnsw" and info["rows"] > 12
    assert 0.9 <= info["recall_at_10"] <= 1.0
    tower = KnowledgeTower.load(tmp_path / "idx", embedder=embedder)
    assert "Pendergast" in tower.retrieve("Who is the world champion of Tidechess?", 1)[0].text


class _OtherEmbedder:
    """Stands in for a different sentence model: same dimension, other weights."""

    def __init__(self, real):
        from nexus.knowledge.embedder import EmbedderIdentity

        self.identity = EmbedderIdentity("some/other-model", "0123456789abcdef", real.identity.dimension)
        self.count_tokens = real.count_tokens


def test_embedder_mismatch_is_refused(rag_index, embedder, tmp_path):
    with pytest.raises(
        NexusError, match="built with embedder sentence-transformers/all-MiniLM-L6-v2.*some/other-model"
    ):
        KnowledgeTower.load(rag_index, embedder=_OtherEmbedder(embedder))
    with pytest.raises(NexusError, match="not comparable"):
        add_to_index(rag_index, [RAG / "docs"], embedder=_OtherEmbedder(embedder))


def test_broken_indexes_are_refused(rag_index, tmp_path):
    rows = tmp_path / "rows"
    shutil.copytree(rag_index, rows)
    docs = json.loads((rows / DOCS_FILE).read_text())
    (rows / DOCS_FILE).write_text(json.dumps(docs[:-1]))
    with pytest.raises(
        NexusError, match=r"inconsistent: knowledge_index.faiss has \d+ rows but knowledge_docs.json has"
    ):
        index_info(rows)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(rag_index, corrupt)
    data = (corrupt / INDEX_FILE).read_bytes()
    (corrupt / INDEX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(NexusError, match="is corrupt"):
        index_info(corrupt)
    (corrupt / INDEX_FILE).write_bytes(b"not a faiss index at all")
    with pytest.raises(NexusError, match="is corrupt"):
        index_info(corrupt)
    with pytest.raises(NexusError, match="holds no knowledge index"):
        KnowledgeTower.load(tmp_path)


def _nexus(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nexus", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_build_add_info_and_errors(tmp_path):
    out = tmp_path / "cli-idx"
    built = _nexus("index", "build", "--docs", str(RAG / "docs" / "recipes.md"), "--out", str(out), "--chunk-tokens", "40", "--chunk-overlap", "8")  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "indexed" in built.stdout and "flat" in built.stdout
    info = _nexus("index", "info", str(out))
    assert info.returncode == 0 and "recall@10" in info.stdout and "all-MiniLM-L6-v2" in info.stdout
    (tmp_path / "empty").mkdir()
    empty = _nexus("index", "build", "--docs", str(tmp_path / "empty"), "--out", str(tmp_path / "x"))
    assert empty.returncode == 2 and empty.stderr.startswith("nexus: error: no readable documents")
    assert "Traceback" not in empty.stderr
    bad = _nexus(
        "index", "build", "--docs", str(RAG / "docs"), "--out", str(tmp_path / "y"), "--chunk-overlap", "500"
    )
    assert bad.returncode == 2 and "chunk_overlap" in bad.stderr


def test_concurrent_adds_both_land(tmp_path):
    """Two `index add` runs on one index at once: neither's documents are lost."""
    import threading
    import time

    from tests.hash_embedder import HashEmbedder

    class SlowEmbedder(HashEmbedder):
        def embed(self, texts, *, show_progress=False):
            time.sleep(0.5)  # both writers have read the old set before either commits
            return super().embed(texts)

    index_dir = tmp_path / "idx"
    build_index([RAG / "docs"], index_dir, SMALL_CHUNKS, embedder=HashEmbedder())
    before = index_info(index_dir)["rows"]
    docs = []
    for name, fact in [
        ("a", "The ferry to Quillan leaves at dawn."),
        ("b", "Marrow Hall was built in 1791."),
    ]:
        docs.append(tmp_path / f"{name}.md")
        docs[-1].write_text(fact)
    errors = []

    def add(doc):
        try:
            add_to_index(index_dir, [doc], embedder=SlowEmbedder())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(doc,)) for doc in docs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    texts = [d["text"] for d in json.loads((index_dir / DOCS_FILE).read_text())]
    assert index_info(index_dir)["rows"] == before + 2 == len(texts)
    assert any("Quillan" in t for t in texts) and any("Marrow Hall" in t for t in texts)


def test_add_to_an_index_the_user_cannot_write_is_one_line(tmp_path, monkeypatch):
    from tests.hash_embedder import HashEmbedder

    index_dir = tmp_path / "idx"
    build_index([RAG / "docs"], index_dir, SMALL_CHUNKS, embedder=HashEmbedder())
    (index_dir / ".knowledge_write.lock").unlink()

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", denied)  # as for another user's read-only index
    with pytest.raises(NexusError, match=r"cannot write the knowledge index .*: Permission denied"):
        add_to_index(index_dir, [RAG / "docs" / "veloria.md"], embedder=HashEmbedder())
