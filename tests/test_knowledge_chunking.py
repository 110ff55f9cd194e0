"""Chunking: sentence boundaries, token budgets, overlap, offsets; and the document readers."""

from __future__ import annotations

import pytest

from nexus.errors import NexusError
from nexus.knowledge.chunking import chunk_text, split_units
from nexus.knowledge.readers import collect_files, html_to_text, read_document, read_documents


def words(texts):
    """A token counter for tests: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


def sentences(n: int) -> str:
    # Sentence i has exactly 5 words: "Sentence number i is here."
    return " ".join(f"Sentence number {i} is here." for i in range(n))


def test_units_are_sentences_and_markdown_blocks():
    text = "# Title\nFirst sentence. Second one!\n\n- item one\n- item two\nLast? Yes."
    units = [text[a:b] for a, b in split_units(text)]
    assert units == ["# Title", "First sentence.", "Second one!", "- item one", "- item two\nLast?", "Yes."]


def test_chunks_respect_budget_and_end_on_sentence_boundaries():
    text = sentences(20)
    chunks = chunk_text(text, max_tokens=17, overlap_tokens=0, count_tokens=words)
    assert all(c.tokens <= 17 for c in chunks)
    assert all(c.text.endswith("here.") and c.text.startswith("Sentence") for c in chunks)
    # 3 sentences (15 words) fit, a 4th would make 20: ceil(20 / 3) chunks, no overlap -> disjoint cover.
    assert len(chunks) == 7
    assert " ".join(c.text for c in chunks) == text
    for c in chunks:
        assert text[c.start : c.end] == c.text


def test_overlap_repeats_trailing_sentences_within_budget():
    text = sentences(12)
    chunks = chunk_text(text, max_tokens=20, overlap_tokens=10, count_tokens=words)
    assert len(chunks) > 1
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        shared = prev.end - nxt.start
        assert shared > 0, "consecutive chunks must overlap"
        overlap_text = text[nxt.start : prev.end]
        assert len(overlap_text.split()) <= 10
        assert overlap_text.endswith("here.")  # the overlap is whole sentences
        assert nxt.end > prev.end  # and every chunk moves forward
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_every_fact_is_whole_in_some_chunk():
    text = sentences(30)
    chunks = chunk_text(text, max_tokens=12, overlap_tokens=5, count_tokens=words)
    for i in range(30):
        fact = f"Sentence number {i} is here."
        assert any(fact in c.text for c in chunks)


def test_long_sentence_is_cut_between_words():
    text = " ".join(f"w{i}" for i in range(50)) + "."
    chunks = chunk_text(text, max_tokens=8, overlap_tokens=2, count_tokens=words)
    assert all(c.tokens <= 8 for c in chunks)
    covered = set()
    for c in chunks:
        covered |= set(c.text.split())
    assert covered == set(text.split())


def test_bad_sizes_and_empty_text():
    assert chunk_text("   \n\n ", max_tokens=5, overlap_tokens=1, count_tokens=words) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a. b.", max_tokens=5, overlap_tokens=5, count_tokens=words)
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("a. b.", max_tokens=0, overlap_tokens=0, count_tokens=words)


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in its text layer (Helvetica), built by hand."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_readers_cover_formats(tmp_path):
    (tmp_path / "a.md").write_text("# Head\nMarkdown body.")
    (tmp_path / "b.rst").write_text("Title\n=====\n\nRest body.")
    (tmp_path / "c.py").write_text("def f():\n    return 1\n")
    (tmp_path / "d.html").write_text("<html><script>hidden()</script><p>Visible &amp; kept.</p></html>")
    (tmp_path / "e.pdf").write_bytes(_minimal_pdf("The harbour of Quillon is guarded by seven owls."))
    (tmp_path / "f.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "g.md").write_text("never read")
    files = collect_files([tmp_path])
    assert [f.name for f in files] == ["a.md", "b.rst", "c.py", "d.html", "e.pdf"]
    docs = {d.source.rsplit("/", 1)[-1]: d.text for d in read_documents([tmp_path])}
    assert docs["d.html"] == "Visible & kept."
    assert "guarded by seven owls" in docs["e.pdf"]
    assert "return 1" in docs["c.py"]
    assert html_to_text("<h1>A</h1><p>b</p><style>x{}</style>") == "A\n\nb"


def test_reader_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NexusError, match="no readable documents"):
        collect_files([tmp_path / "empty"])
    with pytest.raises(NexusError, match="not found"):
        collect_files([tmp_path / "missing"])
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(NexusError, match="unsupported document type"):
        collect_files([tmp_path / "x.bin"])
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(NexusError, match="cannot read PDF"):
        read_document(tmp_path / "broken.pdf")
