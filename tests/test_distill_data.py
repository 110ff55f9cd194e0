"""Packing, response-only masks, held-out split and the tokenized-data cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nexus.data.corpus import build_corpus, load_source, parse_builtin
from nexus.data.formats import Example
from nexus.data.packing import IGNORE_INDEX, Document, encode_example, pack_documents, split_heldout
from nexus.errors import NexusError


def test_packing_resets_positions_and_never_predicts_across_documents():
    docs = [
        Document([1, 2, 3], [True] * 3),
        Document([4, 5, 6, 7, 8], [True] * 5),
        Document([9, 10], [True, True]),
    ]
    rows = pack_documents(docs, seq_len=4, pad_id=0)
    # A document never starts with a lone token at the end of a row (row 0 is padded instead);
    # a document longer than the room left is split across rows (row 1 -> row 2).
    assert rows.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7], [8, 9, 10, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 1, 0]]
    # the last token of a document never predicts the next document's first token
    assert rows.labels.tolist() == [[2, 3, -100, -100], [5, 6, 7, -100], [-100, 10, -100, -100]]
    batch = rows.batch([2, 0])
    assert batch["loss_mask"].tolist() == [[False, True, False, False], [True, True, False, False]]
    assert rows.scored_tokens() == 6


def test_keep_whole_packing_never_splits_a_document_that_fits_a_row():
    rng = np.random.default_rng(0)
    docs = [
        Document(list(range(100 * i, 100 * i + n)), [True] * n) for i, n in enumerate(rng.integers(2, 17, 60))
    ]
    docs.append(Document(list(range(9000, 9040)), [True] * 40))  # longer than a row: cut in row-sized pieces
    rows = pack_documents(docs, seq_len=16, pad_id=-1, keep_whole=True)
    # every document that fits is one contiguous run with positions 0..n-1 in a single row
    starts = {}
    for r, (ids, pos) in enumerate(zip(rows.input_ids.tolist(), rows.position_ids.tolist(), strict=True)):
        for t, (tok, p) in enumerate(zip(ids, pos, strict=True)):
            if tok != -1 and p == 0:
                starts[tok] = (r, t)
    for doc in docs[:-1]:
        r, t = starts[doc.ids[0]]
        assert rows.input_ids[r, t : t + len(doc.ids)].tolist() == doc.ids
        assert rows.position_ids[r, t : t + len(doc.ids)].tolist() == list(range(len(doc.ids)))
    assert {9000, 9016, 9032} <= starts.keys()  # the long one: pieces at 0, 16, 32
    # every next-token target is kept except across the long document's two cuts; little room is wasted
    assert rows.scored_tokens() == sum(len(d.ids) - 1 for d in docs) - 2
    tokens = sum(len(d.ids) for d in docs)
    assert len(rows) * 16 - tokens < 16 * 4


def test_gold_documents_mark_their_scored_tokens_through_packing_mixing_and_the_cache(
    tmp_path, tiny_tokenizer
):
    from nexus.data import corpus
    from nexus.data.domains import _rows

    docs = [Document([1, 2, 3], [False, True, True], gold=True), Document([4, 5, 6], [True] * 3)]
    rows = pack_documents(docs, seq_len=8, pad_id=0)
    assert rows.labels.tolist() == [[2, 3, -100, 5, 6, -100, -100, -100]]
    assert rows.gold.tolist() == [[True, True, False, False, False, False, False, False]]
    assert rows.batch([0])["gold_mask"].tolist() == rows.gold.tolist()
    assert pack_documents(docs[1:], seq_len=8, pad_id=0).gold is None  # no gold rows: no mask
    assert "gold_mask" not in pack_documents(docs[1:], seq_len=8, pad_id=0).batch([0])
    plain = pack_documents(docs[1:], seq_len=8, pad_id=0)
    mixed = _rows([(0, plain), (2, rows)], np.array([1, 0]), ("code", "math", "chat"))
    assert mixed.gold.tolist() == [rows.gold[0].tolist(), [False] * 8] and mixed.domain_ids.tolist() == [2, 0]
    corpus._save(corpus.Corpus(rows, None, "k", None), tmp_path / "k", 2)
    assert np.array_equal(corpus._load_cached(tmp_path / "k").train.gold, rows.gold)
    gold = Example("chat", "x:1", prompt="q", response="a", extra={"gold": True})
    assert encode_example(tiny_tokenizer, gold).gold
    assert not encode_example(tiny_tokenizer, Example("chat", "x:2", prompt="q", response="a")).gold


def test_response_only_targets(tiny_tokenizer):
    ex = Example("chat", "x:1", prompt="What is 2 + 2?", response="4")
    full = encode_example(tiny_tokenizer, ex, loss_on="all")
    resp = encode_example(tiny_tokenizer, ex, loss_on="response")
    assert all(full.target) and 0 < sum(resp.target) < len(resp.target)
    rows = pack_documents([resp], seq_len=64, pad_id=0)
    scored = rows.labels[0][rows.labels[0] != IGNORE_INDEX].tolist()
    assert tiny_tokenizer.decode(scored).startswith("4")
    with pytest.raises(NexusError, match="evaluation-only"):
        encode_example(tiny_tokenizer, Example("choice", "piqa:1", prompt="g", choices=["a", "b"], label=0))


def test_heldout_split_is_deterministic_and_disjoint():
    docs = [Document([i, i + 1, i + 2], [True] * 3) for i in range(100)]
    train, held = split_heldout(docs, 0.1, seed=0)
    again_train, again_held = split_heldout(docs, 0.1, seed=0)
    assert [d.ids for d in held] == [d.ids for d in again_held] and len(train) == len(again_train)
    assert 3 <= len(held) <= 20 and len(train) + len(held) == 100
    assert not {tuple(d.ids) for d in train} & {tuple(d.ids) for d in held}


def test_corpus_cache_is_reused_and_keyed_by_content(tiny_tokenizer, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i} " * 10}) + "\n" for i in range(40)))
    first = build_corpus([str(data)], tiny_tokenizer, seq_len=32, cache_dir=tmp_path / "cache")
    second = build_corpus([str(data)], tiny_tokenizer, seq_len=32, cache_dir=tmp_path / "cache")
    assert first.key == second.key and isinstance(second.train.input_ids, np.memmap)
    assert np.array_equal(np.asarray(first.train.input_ids), np.asarray(second.train.input_ids))
    assert first.heldout is not None and len(first.heldout) >= 1
    data.write_text("".join(json.dumps({"text": f"other {i} " * 10}) + "\n" for i in range(40)))
    third = build_corpus([str(data)], tiny_tokenizer, seq_len=32, cache_dir=tmp_path / "cache")
    assert third.key != first.key


def test_builtin_spec_and_text_files(tiny_tokenizer, tmp_path):
    assert parse_builtin("builtin:code=3,chat=0") == {
        "code": 3,
        "math": 400,
        "chat": 0,
        "rag": 0,
        "general": 0,
        "docs": 0,
        "copy": 0,
        "codechat": 0,
    }
    assert parse_builtin("builtin:rag=5")["rag"] == 5
    assert parse_builtin("builtin:codechat=7")["codechat"] == 7
    with pytest.raises(NexusError, match="bad builtin"):
        parse_builtin("builtin:poems=3")
    from nexus.data.general import general_prompt_count, general_prompts

    most = general_prompt_count()
    assert len(set(general_prompts(most))) == most
    assert parse_builtin(f"builtin:general={most}")["general"] == most
    with pytest.raises(NexusError, match=f"there are {most} distinct general prompts"):
        parse_builtin(f"builtin:general={most + 1}")
    corpus = build_corpus(["builtin:code=3,math=5,chat=0"], tiny_tokenizer, seq_len=64, heldout_fraction=0.0)
    assert len(corpus.train) >= 2 and corpus.heldout is None
    text = tmp_path / "notes.txt"
    text.write_text("first block of text here\n\nsecond block of text here\n")
    assert len(build_corpus([str(text)], tiny_tokenizer, seq_len=16, heldout_fraction=0.0).train) >= 1
    with pytest.raises(NexusError, match="data not found"):
        build_corpus([str(tmp_path / "nope.jsonl")], tiny_tokenizer, seq_len=16)


def test_rows_with_an_empty_response_are_skipped_with_one_warning(tiny_tokenizer, tmp_path, caplog):
    rows = [{"prompt": f"say {i}", "response": f"{i} " * 5} for i in range(6)]
    rows[2]["response"] = "  "
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        corpus = build_corpus([str(data)], tiny_tokenizer, seq_len=16, heldout_fraction=0.0)
    assert corpus.train.scored_tokens() > 0
    assert [r.getMessage() for r in caplog.records if "empty response" in r.getMessage()] == [
        f"skipped 1 row(s) with an empty response (first: {data}:3)"
    ]
    data.write_text(json.dumps({"prompt": "p", "response": ""}) + "\n")
    with pytest.raises(NexusError, match="every row has an empty response"):
        build_corpus([str(data)], tiny_tokenizer, seq_len=16, heldout_fraction=0.0)


def test_general_prompts_are_distinct_seeded_and_bounded():
    from nexus.data.general import general_prompts

    a, b = general_prompts(300, seed=0), general_prompts(300, seed=1)
    assert len(set(a)) == 300 and a != b and general_prompts(300, seed=0) == a
    with pytest.raises(ValueError, match="distinct prompts"):
        general_prompts(10**6)


def test_code_snippets_extend_past_one_per_file_and_keep_the_first_pass():
    from nexus.data.builtin import python_source_snippets

    first = python_source_snippets(50)
    more = python_source_snippets(400)
    assert [e.source for e in more[:50]] == [e.source for e in first]
    files = [e.source.rsplit(":", 1)[0] for e in more]
    assert len(set(e.source for e in more)) == 400 and len(set(files)) < 400  # files repeat, snippets do not


def test_builtin_docs_and_general_rows(tiny_llama_dir, tiny_tokenizer, tmp_path, monkeypatch):
    from nexus.data.corpus import load_source, source_fingerprint
    from nexus.models.loading import load_model

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    docs = load_source("builtin:code=0,math=0,chat=0,docs=5")
    assert len(docs) == 5 and all(e.kind == "text" and len(e.text) >= 200 for e in docs)
    with pytest.raises(NexusError, match="needs the teacher"):
        load_source("builtin:code=0,math=0,chat=0,general=3")
    teacher, _ = load_model(str(tiny_llama_dir))
    rows = load_source("builtin:code=0,math=0,chat=0,general=3", teacher=teacher, tokenizer=tiny_tokenizer)
    again = load_source("builtin:code=0,math=0,chat=0,general=3", teacher=teacher, tokenizer=tiny_tokenizer)
    assert len(rows) == 3 and all(r.response for r in rows)
    assert [r.response for r in rows] == [r.response for r in again]  # seeded sampling, cached
    # unused extra counts leave the fingerprint of older specs unchanged
    assert "general" not in source_fingerprint("builtin:code=3")
    assert "general_sampling" in source_fingerprint("builtin:general=3")


def test_builtin_copy_rows_repeat_a_random_run_of_whole_words(tiny_tokenizer):
    from nexus.data.copying import MAX_WORDS, MIN_WORDS, copy_examples

    rows = copy_examples(50, tiny_tokenizer, seed=3)
    assert rows == copy_examples(50, tiny_tokenizer, seed=3) and rows != copy_examples(
        50, tiny_tokenizer, seed=4
    )
    for row in rows:
        first, second = row.text.split("\n")
        assert first == second and MIN_WORDS <= len(first.split()) <= MAX_WORDS
        assert row.kind == "text" and row.domain == "chat"
    assert len({row.text for row in rows}) == 50
    assert parse_builtin("builtin:copy=7")["copy"] == 7
    with_copy = load_source("builtin:code=0,math=0,chat=0,copy=7", tokenizer=tiny_tokenizer)
    assert [ex.text for ex in with_copy] == [ex.text for ex in copy_examples(7, tiny_tokenizer)]
    # the benchmark's overlap check reads prompts without a tokenizer: copy rows have none
    assert load_source("builtin:code=0,math=0,chat=0,copy=7", chat_answers=False) == []
    corpus = build_corpus(
        ["builtin:code=0,math=0,chat=0,copy=40"], tiny_tokenizer, seq_len=64, heldout_fraction=0.0
    )
    assert len(corpus.train) >= 1
