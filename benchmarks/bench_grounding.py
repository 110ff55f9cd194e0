"""Does a model answer questions about Nexus from its retrieved docs? (the release's RAG chat)

    .venv/bin/python benchmarks/bench_grounding.py --model nexus-release-v1 [--model default ...]

Each model answers ten how-to questions about Nexus, whose answers are in `docs/` and the
README, through the chat's own path: retrieval from the knowledge index (the model's own for a
release, else `--knowledge DIR`, else an index of `docs/` + `README.md` built into a temporary
directory), the RAG prompt, greedy decoding with the chat's default repetition penalty. An answer
is *grounded* when it contains one of the question's key facts (a command, flag or file named in
the docs). It also counts *retrieved*: the context held a key fact, so that retrieval misses are
not blamed on the model. The questions are not training data: the recovery phase's grounded rows
come from the Python standard library's docstrings (`nexus.data.grounded`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (question, key facts: an answer that names any of them is grounded)
QUESTIONS = [
    ("How do I pause training?", ["pause.flag", "nexus pause"]),
    ("How do I resume a paused run?", ["nexus resume", "rm flags/pause.flag"]),
    ("How do I stop the pipeline cleanly?", ["stop.flag", "nexus stop", "ctrl-c"]),
    ("How do I start the pipeline over?", ["--fresh"]),
    ("How do I run only part of the pipeline?", ["--only", "--from"]),
    ("How do I watch the status line from another terminal?", ["status --watch"]),
    ("How do I get a quick first look at the pipeline?", ["--preset quick"]),
    ("How do I run the test suite?", ["make test"]),
    ("How do I build a knowledge index?", ["nexus index build"]),
    ("Which file holds the pipeline's status?", ["status.json"]),
]


def has_key(text: str, keys: list[str]) -> bool:
    return any(key.lower() in text.lower() for key in keys)


def evaluate(spec: str, knowledge: str | None, max_new_tokens: int, show: bool) -> dict:
    from nexus.inference.loading import knowledge_dir_for, load_chat_model
    from nexus.inference.session import ChatOptions, ChatSession
    from nexus.knowledge.tower import KnowledgeTower

    model, tokenizer, resolved = load_chat_model(spec, dtype="float32", device="cpu")
    index = knowledge or knowledge_dir_for(resolved)
    tower = KnowledgeTower.load(index)
    grounded = retrieved = 0
    tokens, seconds = 0, 0.0
    for question, keys in QUESTIONS:
        session = ChatSession(
            model, tokenizer, tower=tower, options=ChatOptions(max_new_tokens=max_new_tokens)
        )
        result = session.respond(question)
        ok, ctx = has_key(result.text, keys), any(has_key(c.text, keys) for c in result.retrieved)
        grounded += ok
        retrieved += ctx
        tokens += result.new_tokens
        seconds += result.seconds
        if show:
            mark = "grounded" if ok else ("missed" if ctx else "not retrieved")
            print(f"  [{mark}] {question}\n    {' '.join(result.text.split())[:300]}")
    return {"grounded": grounded, "retrieved": retrieved, "tok_s": tokens / max(seconds, 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model spec (repeatable)")
    parser.add_argument(
        "--knowledge", help="knowledge index directory (default: the model's own, else docs/)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--quiet", action="store_true", help="only the summary table")
    args = parser.parse_args()

    from nexus.knowledge.index import IndexConfig, build_index

    with tempfile.TemporaryDirectory() as tmp:
        fallback = None
        rows = []
        for spec in args.model:
            knowledge = args.knowledge
            if knowledge is None and not (Path(spec) / "knowledge_index.faiss").is_file():
                if fallback is None:
                    fallback = Path(tmp) / "index"
                    build_index([ROOT / "docs", ROOT / "README.md"], fallback, IndexConfig())
                knowledge = str(fallback)
            print(f"{spec}:")
            t0 = time.perf_counter()
            result = evaluate(spec, knowledge, args.max_new_tokens, not args.quiet)
            rows.append((spec, result, time.perf_counter() - t0))
    n = len(QUESTIONS)
    print("\n| model | grounded answers | context had the answer | tokens/s |\n| --- | ---: | ---: | ---: |")
    for spec, r, _ in rows:
        print(f"| {spec} | {r['grounded']}/{n} | {r['retrieved']}/{n} | {r['tok_s']:.1f} |")


if __name__ == "__main__":
    main()
