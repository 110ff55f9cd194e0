"""RAG value: exact-answer accuracy of a model on the fictional set, without and with RAG.

    .venv/bin/python benchmarks/bench_knowledge_rag_value.py [--model default] [--chunk-tokens 200]

The questions (tests/assets/rag/questions.jsonl) are about invented facts no model can know;
an answer is correct when the normalized gold answer occurs in the normalized output.
Each question is asked in a fresh conversation, greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RAG = Path(__file__).resolve().parents[1] / "tests" / "assets" / "rag"


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_correct(answer: str, output: str) -> bool:
    return f" {normalize(answer)} " in f" {normalize(output)} "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--chunk-overlap", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()

    from nexus.inference import ChatOptions, ChatSession, load_chat_model
    from nexus.knowledge import IndexConfig, KnowledgeTower, build_index

    questions = [
        json.loads(line) for line in (RAG / "questions.jsonl").read_text().splitlines() if line.strip()
    ]
    model, tokenizer, resolved = load_chat_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(
            [RAG / "docs"], tmp, IndexConfig(chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap)
        )
        tower = KnowledgeTower.load(tmp)
        scores = {}
        for rag in (False, True):
            correct, started = 0, time.perf_counter()
            for q in questions:
                session = ChatSession(
                    model,
                    tokenizer,
                    tower=tower,
                    options=ChatOptions(max_new_tokens=args.max_new_tokens, rag=rag),
                )
                answer = session.respond(q["question"]).text
                ok = is_correct(q["answer"], answer)
                correct += ok
                if args.show:
                    print(
                        f"[{'rag' if rag else 'no rag'}] {'OK ' if ok else 'BAD'} {q['question']} -> {answer!r}"
                    )
            scores[rag] = correct / len(questions)
            print(
                f"{'with RAG   ' if rag else 'without RAG'}: {correct}/{len(questions)} = {scores[rag]:.0%} exact-answer "
                f"accuracy ({time.perf_counter() - started:.1f} s)"
            )
    print(
        f"model: {resolved.describe()}; index: {len(tower)} chunks ({args.chunk_tokens} tokens, overlap {args.chunk_overlap})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
