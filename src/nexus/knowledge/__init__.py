"""The Knowledge Tower: documents -> chunks -> embeddings -> FAISS index -> retrieved context.

* :func:`build_index` / :func:`add_to_index` / :func:`index_info` manage an index directory
  (``knowledge_index.faiss`` + ``knowledge_docs.json`` + ``knowledge_meta.json``);
* :class:`KnowledgeTower` loads one and answers ``retrieve(query, k)`` and
  ``retrieve_text_context(prompt)`` (the block the chat prepends to the user's message).

Heavy libraries (faiss, sentence-transformers) load on first use, not on import.
"""

from nexus.knowledge.chunking import Chunk, chunk_text, split_units
from nexus.knowledge.index import (
    DOCS_FILE,
    INDEX_FILE,
    META_FILE,
    IndexConfig,
    add_to_index,
    build_index,
    index_info,
    recall_at_k,
)
from nexus.knowledge.readers import Document, collect_files, read_document, read_documents
from nexus.knowledge.tower import KnowledgeTower, Retrieved, augment_prompt, format_context

__all__ = [
    "DOCS_FILE",
    "INDEX_FILE",
    "META_FILE",
    "Chunk",
    "Document",
    "IndexConfig",
    "KnowledgeTower",
    "Retrieved",
    "add_to_index",
    "augment_prompt",
    "build_index",
    "chunk_text",
    "collect_files",
    "format_context",
    "index_info",
    "read_document",
    "read_documents",
    "recall_at_k",
    "split_units",
]
