"""`nexus index build|add|info`: the Knowledge Tower's index on disk."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("index", help="build, extend and describe a knowledge index (RAG)")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="read, chunk and embed documents into a new index")
    build.add_argument("--docs", nargs="+", required=True, metavar="PATH", help="files and folders to index")
    build.add_argument("--out", required=True, metavar="DIR", help="index directory (created if missing)")
    build.add_argument("--config", metavar="YAML", help="YAML file whose 'index' section sets the options")
    build.add_argument(
        "--embedder", help="'default' (all-MiniLM-L6-v2), a sentence-transformers directory or hub name"
    )
    build.add_argument("--chunk-tokens", type=int, help="max embedder tokens per chunk (default 128)")
    build.add_argument(
        "--chunk-overlap", type=int, help="overlap between consecutive chunks, in tokens (default 32)"
    )
    build.add_argument("--hnsw-threshold", type=int, help="use HNSW above this many chunks (default 20000)")
    build.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.set_defaults(func=_build)

    add = sub.add_parser(
        "add", help="append documents to an index (duplicates skipped, old chunks not re-embedded)"
    )
    add.add_argument("index", metavar="DIR", help="an index directory")
    add.add_argument("--docs", nargs="+", required=True, metavar="PATH", help="files and folders to add")
    add.add_argument("--json", action="store_true", help="print the summary as JSON")
    add.set_defaults(func=_add)

    info = sub.add_parser("info", help="describe an index (rows, embedder, type, recall@10 vs exact search)")
    info.add_argument("index", metavar="DIR", help="an index directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from nexus.config import deep_merge, load_config, parse_overrides
    from nexus.knowledge.index import IndexConfig, build_index

    flags = {
        "embedder": args.embedder,
        "chunk_tokens": args.chunk_tokens,
        "chunk_overlap": args.chunk_overlap,
        "hnsw_threshold": args.hnsw_threshold,
    }
    overrides = deep_merge({k: v for k, v in flags.items() if v is not None}, parse_overrides(args.set))
    config = load_config(IndexConfig, args.config, section="index", overrides=overrides)
    summary = build_index(args.docs, args.out, config)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"indexed {summary['chunks']} chunks from {summary['documents']} documents into {summary['out_dir']} "
            f"({summary['index_type']}, recall@10 {summary['recall_at_10']:.3f}, "
            f"{summary['chunks_per_second']:.0f} chunks/s embedding)"
        )
    return 0


def _add(args: argparse.Namespace) -> int:
    from nexus.knowledge.index import add_to_index

    summary = add_to_index(args.index, args.docs)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"added {summary['added_chunks']} chunks from {summary['added_documents']} documents to {summary['out_dir']} "
            f"(skipped {summary['skipped_duplicate_documents']} duplicate documents, "
            f"{summary['skipped_duplicate_chunks']} duplicate chunks; {summary['rows']} rows, {summary['index_type']})"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from nexus.knowledge.index import index_info

    info = index_info(args.index)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    embedder = info["embedder"]
    chunking = info["chunking"]
    rows = [
        ("directory", info["directory"]),
        ("chunks", info["rows"]),
        ("documents", info["documents"]),
        ("embedder", f"{embedder.get('name')} (fingerprint {embedder.get('fingerprint')})"),
        ("dimension", info["dimension"]),
        ("metric", f"{info['metric']} on unit vectors (cosine)"),
        ("index type", info["index_type"] + (f" (M={info['hnsw']['m']}, efSearch={info['hnsw']['ef_search']})" if "hnsw" in info else "")),
        ("recall@10", f"{info['recall_at_10']:.3f} vs exact search"),
        ("chunking", f"{chunking.get('max_tokens')} tokens, overlap {chunking.get('overlap_tokens')}, {chunking.get('unit')}-aware"),
        ("built", f"{info['built_at']} in {info['build_seconds']} s (updated {info['updated_at']})"),
        ("size", f"{info['size_bytes'] / 1e6:.2f} MB"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
