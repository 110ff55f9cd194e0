"""The teacher top-k cache's key covers whole weight files, memoized (issue 14)."""

from __future__ import annotations

import os

import nexus.trainer.cache as cache_mod
from nexus.trainer.cache import teacher_fingerprint


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
