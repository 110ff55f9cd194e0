"""Knowledge Tower speed: index build chunks/s; one-query retrieval p50/p95 at 10k and 100k
chunks, flat vs HNSW, with HNSW recall@10 against exact search.

    .venv/bin/python benchmarks/bench_knowledge.py [--build-rows 400] [--sizes 10000 100000] [--queries 200]

Build speed is measured end to end (read, chunk, embed, index) on GSM8K training rows from
../shared/data (used here as plain text). For retrieval the corpus is grown to each size from
the real chunk embeddings: every synthetic vector is a real one plus Gaussian noise,
renormalized (cosine ~0.7 to its origin), so the data keeps the clustered shape of real text
embeddings; embedding all 100k chunks on a 2-core CPU would take most of an hour. Queries
are real questions embedded with the same model; a query's latency = embedding it + search.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def percentiles(samples_s: list[float]) -> str:
    p50, p95 = np.percentile(np.array(samples_s) * 1e3, [50, 95])
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-rows", type=int, default=400, help="GSM8K rows to index for the build speed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (0: faiss default)")
    args = parser.parse_args()

    import faiss
    import torch

    from nexus.knowledge import IndexConfig, KnowledgeTower, build_index
    from nexus.knowledge.embedder import Embedder
    from nexus.knowledge.index import new_index, recall_at_k

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"CPU threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[: args.build_rows + args.queries]]
    embedder = Embedder("default")
    embedder.embed(["warm up"])

    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i, row in enumerate(rows[: args.build_rows]):
            (docs / f"row{i:05d}.md").write_text(f"# Problem {i}\n\n{row['question']}\n\n{row['answer']}\n")
        started = time.perf_counter()
        summary = build_index(
            [docs], Path(tmp) / "idx", IndexConfig(chunk_tokens=64, chunk_overlap=16), embedder=embedder
        )
        seconds = time.perf_counter() - started
        print(
            f"build: {summary['chunks']} chunks from {summary['documents']} documents in {seconds:.1f} s = "
            f"{summary['chunks'] / seconds:.0f} chunks/s end to end (embedding alone {summary['chunks_per_second']:.0f} chunks/s)"
        )
        tower = KnowledgeTower.load(Path(tmp) / "idx", embedder=embedder)
        base = tower.index.reconstruct_n(0, tower.index.ntotal)  # (n, 384) real chunk embeddings

    queries = [r["question"] for r in rows[args.build_rows :]][: args.queries]
    embed_times = []
    query_vectors = []
    for q in queries:
        t = time.perf_counter()
        query_vectors.append(embedder.embed([q]))
        embed_times.append(time.perf_counter() - t)
    query_vectors = np.concatenate(query_vectors)
    print(f"query embedding (1 query): {percentiles(embed_times)}")

    rng = np.random.default_rng(0)
    for size in args.sizes:
        origin = rng.integers(0, len(base), size)
        noise = rng.standard_normal((size, base.shape[1])).astype(np.float32) * 0.05  # ~0.7 cosine to origin
        vectors = base[origin] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors[: len(base)] = base  # the real chunks are in the corpus too
        flat = new_index(vectors.shape[1], size, IndexConfig(hnsw_threshold=size))
        flat.add(vectors)
        config = IndexConfig(hnsw_threshold=1)
        t = time.perf_counter()
        hnsw = new_index(vectors.shape[1], size, config)
        hnsw.add(vectors)
        hnsw_build = time.perf_counter() - t
        _, truth = flat.search(query_vectors, 10)
        _, got = hnsw.search(query_vectors, 10)
        recall = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), got.tolist(), strict=True)]
        )
        for name, index in (("flat", flat), ("hnsw", hnsw)):
            search_times, total_times = [], []
            for i in range(len(queries)):
                t = time.perf_counter()
                index.search(query_vectors[i : i + 1], 10)
                search_times.append(time.perf_counter() - t)
                total_times.append(search_times[-1] + embed_times[i])
            extra = (
                f"  recall@10 {recall:.3f} (real queries), {recall_at_k(hnsw):.3f} (sampled), "
                f"build {hnsw_build:.1f} s, M={config.hnsw_m} efSearch={config.hnsw_ef_search}"
                if name == "hnsw"
                else "  recall@10 1.000 (exact)"
            )
            print(
                f"{size:>7} chunks {name}: search {percentiles(search_times)} | with embedding {percentiles(total_times)}{extra}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
