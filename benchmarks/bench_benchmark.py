"""Speed and precision of the benchmark's scoring on the default teacher.

    .venv/bin/python benchmarks/bench_benchmark.py [--items 16] [--piqa-rows 200] [--precisions bf16,fp32] [--threads 1]

Prints items/s for each task kind (choice: PIQA log-likelihood; generate: built-in math;
code: built-in code incl. the sandbox) per precision, and PIQA acc / acc_norm of the teacher
on ``--piqa-rows`` rows (a seeded draw, or the file's first rows with ``--piqa-first``; 0 = all)
with the lm-evaluation-harness prompt, with the fp32-vs-bf16 agreement
of the per-item predictions (whether bf16 keeps the scores correct).
"""

from __future__ import annotations

import argparse
import time

from nexus.benchmark.runner import BenchmarkConfig, load_for_benchmark, score_batch
from nexus.benchmark.tasks import load_task, resolve_task_specs


def items_per_second(lm, task, cfg) -> tuple[float, list[dict]]:
    size = cfg.loglik_items if task.spec.kind == "choice" else cfg.batch_size
    records, start = [], time.perf_counter()
    for i in range(0, len(task.items), size):
        records += score_batch(lm, task, task.items[i : i + size], cfg)
    return len(task.items) / (time.perf_counter() - start), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="items per generation/code task")
    parser.add_argument("--piqa-rows", type=int, default=200, help="PIQA rows (0: all 1338 shared rows)")
    parser.add_argument(
        "--piqa-first",
        action="store_true",
        help="the first --piqa-rows rows of the file (as lm-eval's --limit) instead of a seeded draw",
    )
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a crowded machine)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    piqa_predictions = {}
    for precision in args.precisions.split(","):
        cfg = BenchmarkConfig(precision=precision, batch_size=8, max_new_tokens=args.max_new_tokens)
        lm = load_for_benchmark("teacher", "default", cfg)
        piqa = load_task(
            resolve_task_specs(["piqa"])[0],
            limit=None if args.piqa_first else args.piqa_rows or None,
            seed=cfg.seed,
        )
        if args.piqa_first and args.piqa_rows:
            piqa.items = piqa.items[: args.piqa_rows]
        rate, records = items_per_second(lm, piqa, cfg)
        acc = sum(r["correct"] for r in records) / len(records)
        acc_norm = sum(r["correct_norm"] for r in records) / len(records)
        piqa_predictions[precision] = [r["pred"] for r in records]
        print(
            f"[{precision}] choice (piqa, {len(records)} rows): {rate:.2f} items/s; acc {acc:.4f} acc_norm {acc_norm:.4f}"
        )
        for name in ("builtin-math", "builtin-code") if args.items else ():
            task = load_task(resolve_task_specs([name])[0], limit=args.items, seed=cfg.seed)
            rate, records = items_per_second(lm, task, cfg)
            tokens = sum(r["tokens"] for r in records)
            kind = task.spec.kind
            print(f"[{precision}] {kind} ({name}, {len(records)} items, {tokens} tokens): {rate:.3f} items/s")
    if len(piqa_predictions) == 2:
        a, b = piqa_predictions.values()
        same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
        print(f"piqa predictions identical across precisions: {same:.4f}")


if __name__ == "__main__":
    main()
