"""Read documents into plain text: text, Markdown, reStructuredText, HTML, source code and PDF.

Folders are walked recursively (hidden entries skipped) and keep only files with a supported
extension; a file named explicitly must have one too. PDFs contribute their text layer
(``pypdf``); scanned pages without one yield no text.
"""

from __future__ import annotations

import html.parser
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import NexusError

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg"})  # fmt: skip
CODE_EXTENSIONS = frozenset({".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".rs", ".go", ".java", ".kt", ".js", ".ts", ".tsx", ".jsx", ".rb", ".php", ".cs", ".swift", ".scala", ".sh", ".bash", ".sql", ".r", ".m", ".lua", ".pl", ".hs"})  # fmt: skip
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
PDF_EXTENSIONS = frozenset({".pdf"})
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | CODE_EXTENSIONS | HTML_EXTENSIONS | PDF_EXTENSIONS


@dataclass(frozen=True)
class Document:
    source: str  # the file's path as given (or found under a given folder)
    text: str


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page, one line per block element; script/style dropped."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "title", "header", "footer", "dt", "dd"})  # fmt: skip
    _SKIP = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n\n" if tag.startswith("h") or tag == "p" else "\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n\n" if tag.startswith("h") or tag in ("p", "title") else "\n")

    def handle_data(self, data):
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def pdf_to_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, OSError, ValueError, KeyError) as exc:
        raise NexusError(f"cannot read PDF {path}: {exc}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def read_document(path: str | Path) -> Document:
    """One file's text (see the module docstring for the formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise NexusError(
            f"unsupported document type {path} (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
        )
    if suffix in PDF_EXTENSIONS:
        return Document(str(path), pdf_to_text(path))
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NexusError(f"cannot read {path}: {exc.strerror or exc}") from None
    if suffix in HTML_EXTENSIONS:
        raw = html_to_text(raw)
    return Document(str(path), raw.replace("\r\n", "\n"))


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Supported files under ``paths`` (files as given, folders walked), in a stable order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                raise NexusError(
                    f"unsupported document type {path} (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
                )
            found.append(path)
        elif path.is_dir():
            inside = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not inside:
                raise NexusError(
                    f"no readable documents in {path} (supported: text, Markdown, rST, HTML, code, PDF)"
                )
            found.extend(inside)
        else:
            raise NexusError(f"document path not found: {path}")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise NexusError("no documents given")
    return unique


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Every supported document under ``paths``; documents with no text are skipped (logged)."""
    documents = []
    for file in collect_files(paths):
        doc = read_document(file)
        if doc.text.strip():
            documents.append(doc)
        else:
            log.warning("skipping %s: no text", file)
    return documents
