"""The teacher top-k cache's figures: held-out KL at the same temperature as a live teacher, a
key covering whole weight files, K + 1 bins that sum to one (issue 14)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tiny
import torch
import torch.nn.functional as F

import nexus.trainer.cache as cache_mod
from nexus.data.formats import Example
from nexus.data.packing import encode_examples, pack_documents
from nexus.trainer.cache import build_teacher_cache, teacher_fingerprint
from nexus.trainer.divergence import topk_kd_loss
from nexus.trainer.evaluate import evaluate_fidelity
from nexus.trainer.teacher import LiveTeacherSource


def _rows(tokenizer, n: int = 8, seq_len: int = 48, offset: int = 0):
    examples = [
        Example(kind="text", source=f"t:{i}", text=f"def g{i}(y):\n    return y - {i} * {i % 4}\n")
        for i in range(offset, offset + n)
    ]
    return pack_documents(encode_examples(tokenizer, examples), seq_len, pad_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    teacher = tiny.build_model("llama", tiny_tokenizer, num_layers=3, intermediate=96, seed=0).float()
    student = tiny.build_model("llama", tiny_tokenizer, num_layers=2, intermediate=96, seed=1).float()
    return teacher, student


def _build(tmp_path, teacher, splits, *, k, temperature, name="c"):
    return build_teacher_cache(
        tmp_path / name,
        teacher,
        splits,
        teacher_id="t",
        data_key="d",
        k=k,
        temperature=temperature,
        dtype=torch.float32,
    )


def test_cached_heldout_kl_at_t2_matches_the_live_teacher_kl(models, tiny_tokenizer, tmp_path):
    """Same teacher, same rows: the cached evaluation of a T=2 cache reports the live KL at T=1
    (k = the whole vocabulary, so the K + 1 bins are the full distribution)."""
    teacher, student = models
    train, heldout = _rows(tiny_tokenizer), _rows(tiny_tokenizer, offset=50)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    cache = _build(tmp_path, teacher, {"train": train, "heldout": heldout}, k=vocab, temperature=2.0)
    live = evaluate_fidelity(student, LiveTeacherSource(teacher), heldout, batch_size=3)
    cached = evaluate_fidelity(student, cache.source("train").heldout(), heldout, batch_size=3)
    assert cached["tokens"] == live["tokens"] > 0
    assert cached["kd_topk"] == pytest.approx(live["kd"], rel=1e-2)  # float16 top-k
    assert cached["top1_agreement"] == pytest.approx(live["top1_agreement"])
    # the train split keeps the training temperature (the KD loss compares it at T=2)
    assert cache.meta["split_temperature"] == {"train": 2.0, "heldout": 1.0}
    # a source at T != 1 (here the train split) is compared at its T and labelled so
    on_train = evaluate_fidelity(student, cache.source("train"), train, batch_size=3)
    assert "kd_topk" not in on_train and on_train["kd_topk_T2"] >= 0


def test_cached_bins_sum_to_one_and_the_loss_uses_them(models, tiny_tokenizer, tmp_path):
    teacher, student = models
    rows = _rows(tiny_tokenizer)
    cache = _build(tmp_path, teacher, {"train": rows}, k=8, temperature=1.0)
    source = cache.source("train")
    idx = np.arange(len(rows))
    batch = rows.batch(idx)
    target = source(batch, idx).target
    bins = torch.cat([target.topk_logp.float(), target.tail_logp.float()[:, None]], -1)
    total = bins.exp().sum(-1)
    assert total.shape[0] == int(batch["loss_mask"].sum()) > 0
    assert (total - 1).abs().max() < 1e-6  # float32 rounding of K + 1 terms
    # the file itself: the stored tail is that of the stored float16 top-k
    stored = np.load(cache.dir / "train_topk_logp.npy").astype(np.float32)
    tail = np.load(cache.dir / "train_tail_logp.npy")
    file_total = np.exp(stored).sum(-1) + np.exp(tail)
    assert np.abs(file_total - 1).max() < 1e-6
    # the loss on the cached batch is the KL against exactly those normalized bins
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    logits = logits[batch["loss_mask"]]
    loss = topk_kd_loss(logits, target.topk_logp, target.topk_idx, target.tail_logp)
    s = F.log_softmax(logits.float(), -1)
    s_top = s.gather(-1, target.topk_idx)
    s_bins = torch.cat([s_top, torch.log1p(-s_top.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))], -1)
    want = (bins.exp() * (bins - s_bins)).sum(-1)
    assert torch.allclose(loss, want, atol=1e-5)


def _weights(root, size=5 << 20):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    path = root / "model.safetensors"
    path.write_bytes(bytes(size))
    return path


def test_teacher_key_covers_bytes_after_the_first_4_mib(tmp_path):
    path = _weights(tmp_path / "m")
    memo = tmp_path / "memo.json"
    before = teacher_fingerprint(path.parent, memo=memo)
    with open(path, "r+b") as f:  # a fine-tune that leaves the first 4 MiB (embeddings) alone
        f.seek((4 << 20) + 123)
        f.write(b"\x01")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert teacher_fingerprint(path.parent, memo=memo) != before
    assert teacher_fingerprint(path.parent, memo=None) == teacher_fingerprint(path.parent, memo=memo)


def test_teacher_key_memo_skips_rehashing_an_unchanged_file(tmp_path, monkeypatch):
    path = _weights(tmp_path / "m", size=1 << 20)
    memo = tmp_path / "memo.json"
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    first = teacher_fingerprint(path.parent, memo=memo)
    assert len(calls) == 1 and memo.is_file()
    assert teacher_fingerprint(path.parent, memo=memo) == first and len(calls) == 1  # from the memo
    st = path.stat()  # touched (same bytes): rehashed once, same key
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert teacher_fingerprint(path.parent, memo=memo) == first and len(calls) == 2
    memo.write_text("not json")  # a damaged memo costs a rehash, never a wrong key
    assert teacher_fingerprint(path.parent, memo=memo) == first and len(calls) == 3
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "home"))
    teacher_fingerprint(path.parent)
    assert (tmp_path / "home" / "file_hashes.json").is_file()
