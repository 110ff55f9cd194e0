"""The chat driven through a pseudo-terminal: two turns with RAG, /sources, /rag off, /quit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

RAG = Path(__file__).parent / "assets" / "rag"


@pytest.fixture(scope="module")
def veloria_index(tmp_path_factory) -> Path:
    from nexus.knowledge import IndexConfig, build_index

    out = tmp_path_factory.mktemp("veloria-index")
    build_index([RAG / "docs" / "veloria.md"], out, IndexConfig(chunk_tokens=48, chunk_overlap=12))
    return out


def test_two_turns_rag_off_and_quit(tiny_llama_dir, veloria_index):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "nexus", "chat", "--model_path", str(tiny_llama_dir), "--knowledge", str(veloria_index),
         "--max-new-tokens", "5", "--verbose"],
        encoding="utf-8", timeout=120, dimensions=(40, 200),
    )  # fmt: skip
    try:
        child.expect("loaded Hugging Face checkpoint")
        child.expect(r"knowledge index .*: \d+ chunks \(RAG on\)")
        child.expect_exact(">>> ")
        child.sendline("What is the capital of Veloria?")
        child.expect(r"\[\d+ tokens in [\d.]+ s, [\d.]+ tokens/s\]")  # the turn was answered
        child.expect_exact(">>> ")
        child.sendline("/sources")
        child.expect(r"\[1\] .*veloria\.md \(chunk \d+, score 0\.\d\d\)")
        child.expect_exact(">>> ")
        child.sendline("/rag off")
        child.expect_exact("RAG off")
        child.expect_exact(">>> ")
        child.sendline("And its highest mountain?")
        child.expect(r"\[\d+ tokens in [\d.]+ s")
        child.expect_exact(">>> ")
        child.sendline("/sources")
        child.expect_exact("no context was retrieved for the last answer")
        child.expect_exact(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
