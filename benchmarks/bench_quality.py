"""Score students for the recipe ablations of docs/quality.md: PIQA on the *tune* part of the
shared rows (decisions are made on it; the untuned part is left to `nexus retention`), the
built-in chat task, and KL / top-1 agreement with the teacher on held-out evaluation texts
(the evaluation splits of GSM8K, Code Alpaca and Self-Instruct: never trained on).

    python benchmarks/bench_quality.py A=/work/runs/abl/A/distill/model B=... [--teacher default]

Prints one row per model, with the PIQA 95% interval and, for each model after the first, the
paired McNemar p-value of its PIQA items against the first model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from nexus.benchmark.config import BenchmarkConfig
    from nexus.benchmark.runner import (
        _batches,
        fidelity_texts,
        load_for_benchmark,
        measure_fidelity,
        score_batch,
    )
    from nexus.benchmark.stats import mcnemar_exact, wilson_interval
    from nexus.benchmark.tasks import load_task, resolve_task_specs
    from nexus.retention.measures import tuning_sides

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="NAME=MODEL_DIR (the first is the reference for p-values)")
    p.add_argument("--teacher", default="default")
    p.add_argument("--side", default="tune", choices=["tune", "untuned", "all"])
    p.add_argument("--fidelity-items", type=int, default=96)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    cfg = BenchmarkConfig()
    piqa = load_task(resolve_task_specs(["piqa"])[0])
    if args.side != "all":
        sides = tuning_sides(piqa)
        piqa.items = [it for it, side in zip(piqa.items, sides, strict=True) if side == args.side]
    chat = load_task(resolve_task_specs(["builtin-chat"])[0])
    texts = fidelity_texts(
        [load_task(s) for s in resolve_task_specs(["gsm8k", "code_alpaca", "self_instruct"])],
        args.fidelity_items,
    )
    teacher = load_for_benchmark("teacher", args.teacher, cfg)
    rows, reference = [], None
    for spec in [f"teacher={args.teacher}", *args.models]:
        name, _, path = spec.partition("=")
        start = time.perf_counter()
        lm = teacher if name == "teacher" else load_for_benchmark("student", path, cfg)

        def correct(task, lm=lm):
            size = cfg.loglik_items
            return [
                bool(r["correct"]) for b in _batches(task.items, size) for r in score_batch(lm, task, b, cfg)
            ]

        piqa_ok, chat_ok = correct(piqa), correct(chat)
        fid = measure_fidelity(teacher, lm, texts, cfg) if name != "teacher" else None
        low, high = wilson_interval(sum(piqa_ok), len(piqa_ok))
        row = {
            "name": name,
            "piqa": sum(piqa_ok) / len(piqa_ok),
            "piqa_ci": [low, high],
            "piqa_n": len(piqa_ok),
            "chat": sum(chat_ok) / len(chat_ok),
            "kl": None if fid is None else fid.kl,
            "top1": None if fid is None else fid.top1_agreement,
            "seconds": round(time.perf_counter() - start, 1),
        }
        if name != "teacher":
            if reference is None:
                reference = piqa_ok
            else:
                row["p_vs_first"] = mcnemar_exact(reference, piqa_ok)["p_value"]
        rows.append(row)
        kl = "" if fid is None else f"  KL {fid.kl:.3f}  top-1 {fid.top1_agreement:.1%}"
        print(
            f"{name:>24}  PIQA[{args.side}] {row['piqa']:.1%} [{low:.1%}, {high:.1%}] "
            f"({row['piqa'] / rows[0]['piqa']:.1%} of teacher)  chat {row['chat']:.0%}{kl}"
            + (f"  p={row['p_vs_first']:.3f}" if "p_vs_first" in row else ""),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
