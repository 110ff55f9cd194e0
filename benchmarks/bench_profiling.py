"""NIWT profiler acceptance figures on the default teacher (SmolLM2-135M-Instruct, 30 layers).

    .venv/bin/python benchmarks/bench_profiling.py [--threads 1] [--out /tmp/bench_profiling]

1. Speed: the profile of 30 layers x 3 capabilities (code = Code Alpaca, math = GSM8K,
   chat = Self-Instruct, from ../shared/data) at the default probe sizes, wall time, the
   machine's load average around it; the fast path (cached layer inputs) vs naive full re-runs
   timed on the same batches for a few layers.
2. Stability: a second profile from a disjoint probe sample (probe_offset = num_probes);
   Spearman of per-layer sensitivity per capability.
3. Value: three 20-of-30-layer students without training (NIWT plan, first 20 layers, every
   layer but each third), scored on held-out probes (a third disjoint sample) and PIQA
   (2-choice log-likelihood, lm-eval's prompt, the same for all models).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PROBES = [
    f"code={SHARED / 'code_alpaca' / 'code_alpaca_2k.json'}",
    f"math={SHARED / 'gsm8k' / 'train.jsonl'}",
    f"chat={SHARED / 'chat_prompts' / 'user_oriented_instructions.jsonl'}",
]


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def naive_vs_fast(model, tokenizer, layers=(0, 15, 29)) -> dict:
    from nexus.data import load_examples
    from nexus.profiling.engine import LayerRunner, Perturbation, make_batches, naive_sequence_logprobs
    from nexus.profiling.probes import encode_probes, select

    examples = select(load_examples(SHARED / "gsm8k" / "train.jsonl"), 16, seed=0)
    probes = encode_probes("math", examples, tokenizer, max_tokens=384)
    batches = make_batches(probes.sequences, batch_tokens=4096, pad_id=tokenizer.pad_token_id, device="cpu")
    runner, pert = LayerRunner(model), Perturbation("removal")
    start = time.perf_counter()
    cleans = [runner.clean_pass(b) for b in batches]
    clean_s = time.perf_counter() - start
    fast_s, naive_s, max_diff = {}, {}, 0.0
    for layer in layers:
        t = time.perf_counter()
        fast = [
            runner.sequence_logprobs(runner.run_from(c, layer, pert), b)[0]
            for c, b in zip(cleans, batches, strict=True)
        ]
        fast_s[layer] = time.perf_counter() - t
        t = time.perf_counter()
        naive = [naive_sequence_logprobs(model, b, layer, pert)[0] for b in batches]
        naive_s[layer] = time.perf_counter() - t
        for f, n in zip(fast, naive, strict=True):
            max_diff = max(max_diff, float((f - n).abs().max() / n.abs().max()))
    return {"clean_pass_s": clean_s, "fast_s": fast_s, "naive_s": naive_s, "max_rel_diff_bf16": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="/tmp/bench_profiling")
    parser.add_argument("--num-probes", type=int, default=32)
    parser.add_argument("--piqa", type=int, default=400, help="PIQA items for the value experiment")
    parser.add_argument("--rescore", type=int, default=0, help="also a plan re-scored every k removals")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: speed,stability,value,naive")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from nexus.data import load_examples
    from nexus.models import build_student, load_model, load_tokenizer
    from nexus.profiling.config import PlanConfig, ProfileConfig
    from nexus.profiling.metrics import spearman
    from nexus.profiling.phase import load_profile, plan_from_profile, run_profile
    from nexus.profiling.probes import collect_examples, encode_probes, select
    from nexus.profiling.profiler import evaluate_model

    figures: dict = {"threads": torch.get_num_threads()}
    print(f"torch threads {torch.get_num_threads()}; {load()}")

    # 1. speed ---------------------------------------------------------------------------
    cfg = ProfileConfig(model="default", name="teacher", probes=PROBES, num_probes=args.num_probes)
    profile_path = out / "profile" / "teacher.json"
    if "speed" not in skip or not profile_path.is_file():
        before = load()
        cpu = time.process_time()
        summary = run_profile(cfg, results_dir=out)
        cpu = time.process_time() - cpu
        print(
            f"[speed] profile wall {summary['wall_seconds']:.1f} s (30 layers x 3 capabilities, "
            f"{args.num_probes} probes each, max 384 tokens), CPU time {cpu:.1f} s; "
            f"before: {before}; after: {load()}"
        )
        figures["profile_wall_s"] = summary["wall_seconds"]
        figures["profile_cpu_s"] = cpu
    teacher_profile = load_profile(profile_path)
    for cap, c in teacher_profile["capabilities"].items():
        ranked = sorted(zip(teacher_profile["layers"], c["sensitivity"], strict=True), key=lambda p: -p[1])[
            :3
        ]
        print(
            f"[speed] {cap}: baseline NLL {c['baseline']['nll']:.3f}, {c['num_scored_tokens']} scored tokens; "
            "top-3 critical " + ", ".join(f"{layer} ({v:+.1%})" for layer, v in ranked)
        )
        figures.setdefault("top3", {})[cap] = [layer for layer, _ in ranked]

    model, resolved = load_model("default", dtype=torch.bfloat16)
    tokenizer = load_tokenizer(resolved)
    if "naive" not in skip:
        nf = naive_vs_fast(model, tokenizer)
        print(
            "[speed] fast vs naive, removal, 16 GSM8K probes: "
            + ", ".join(
                f"layer {k}: fast {nf['fast_s'][k]:.2f} s / naive {nf['naive_s'][k]:.2f} s"
                for k in nf["fast_s"]
            )
            + f"; clean pass {nf['clean_pass_s']:.2f} s; max relative diff (bf16) {nf['max_rel_diff_bf16']:.2e}"
        )
        figures["naive_vs_fast"] = nf

    # 2. stability -----------------------------------------------------------------------
    if "stability" not in skip:
        cfg2 = ProfileConfig(
            model="default",
            name="teacher_b",
            probes=PROBES,
            num_probes=args.num_probes,
            probe_offset=args.num_probes,
        )
        s2 = run_profile(cfg2, results_dir=out)
        other = load_profile(s2["profile"])
        for cap in teacher_profile["capabilities"]:
            rho = spearman(
                teacher_profile["capabilities"][cap]["sensitivity"], other["capabilities"][cap]["sensitivity"]
            )
            print(f"[stability] {cap}: Spearman of per-layer sensitivity, disjoint probe samples: {rho:.3f}")
            figures.setdefault("stability", {})[cap] = rho

    # 3. value ---------------------------------------------------------------------------
    if "value" not in skip:
        n = 30
        plans = {
            "niwt": plan_from_profile(teacher_profile, PlanConfig(keep_layers=20))["keep_layers"],
            "first20": list(range(20)),
            "drop_every_third": [i for i in range(n) if i % 3 != 2],
        }
        if args.rescore:
            caps = list(teacher_profile["capabilities"])
            same, src = collect_examples(
                caps, [teacher_profile["probes_file"]], num_probes=args.num_probes, seed=0
            )
            sets = [encode_probes(c, ex, tokenizer, max_tokens=384, sources=src[c]) for c, ex in same.items()]
            t = time.perf_counter()
            plans[f"niwt_rescore{args.rescore}"] = plan_from_profile(
                teacher_profile,
                PlanConfig(keep_layers=20, rescore_every=args.rescore),
                model=model,
                probe_sets=sets,
                config=cfg,
            )["keep_layers"]
            print(f"[value] re-scored plan took {time.perf_counter() - t:.1f} s")
        chosen, sources = collect_examples(
            ["code", "math", "chat"], PROBES, num_probes=args.num_probes, seed=0, offset=2 * args.num_probes
        )
        held_out = [
            encode_probes(c, ex, tokenizer, max_tokens=384, sources=sources[c]) for c, ex in chosen.items()
        ]
        piqa = encode_probes(
            "piqa",
            select(load_examples(SHARED / "piqa" / "valid.jsonl"), args.piqa, seed=0),
            tokenizer,
            max_tokens=384,
        )
        rows = {"teacher": evaluate_model(model, [*held_out, piqa], pad_id=tokenizer.pad_token_id)}
        for name, keep in plans.items():
            student = build_student(model, keep)
            rows[name] = evaluate_model(student, [*held_out, piqa], pad_id=tokenizer.pad_token_id)
            del student
        print(f"[value] plans: {json.dumps(plans)}")
        print(f"[value] model              code NLL  math NLL  chat NLL  PIQA acc ({args.piqa} items)")
        for name, m in rows.items():
            print(
                f"[value] {name:<18} {m['code']['nll']:8.3f}  {m['math']['nll']:8.3f}  {m['chat']['nll']:8.3f}  "
                f"{m['piqa']['accuracy']:.3f}"
            )
        figures["value"] = {"plans": plans, "metrics": rows}
    print(f"done; {load()}")
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
