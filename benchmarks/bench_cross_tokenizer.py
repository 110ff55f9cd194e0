"""Cross-tokenizer distillation at equal tokens: sequence-level KD vs ULD vs character alignment.

    .venv/bin/python benchmarks/bench_cross_tokenizer.py --smoke --out runs/xtok_smoke   # a few minutes
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --piqa-limit 600 --out runs/xtok   # ~30 min, 2 cores

Teacher ``--teacher`` (default ``gemma3-270m``: ``nexus models install gemma3-270m``), student
``--student`` (any model with its own tokenizer), by default ``--student-base`` (``default``,
SmolLM2-135M-Instruct) pruned to 2/3 of its layers as ``nexus distill`` prunes a teacher
(:func:`nexus.distillation.student.pruned_student`), saved once under ``OUT/student_init``.

Data (``../shared/data``, split by :mod:`nexus.data.splits`): ``--train-prompts`` prompts from the
*training* split of Self-Instruct, Code Alpaca and GSM8K (seeded, round-robin over the three),
written to ``OUT/train_prompts.jsonl``; ``--heldout-prompts`` prompts from their *evaluation*
split. The teacher answers both once, greedily (:func:`nexus.data.builtin.teacher_answers`,
cached on disk: the training answers are the ones ``nexus distill --seq-kd`` reads back, so no
method pays for them). PIQA is never trained on.

Methods, each one ``nexus distill --seq-kd`` subprocess on the same packed rows (a shared data
cache), steps, batch, sequence length, learning rate, warm-up (a tenth of the steps) and seed, no
in-training evaluation (``--heldout-fraction 0 --eval-every 0``):

* ``seqkd``: CE on the teacher's answers (``--kd-weight 0 --ce-weight 1``), the baseline;
* ``uld`` / ``align``: ``--cross-tokenizer uld|align --kd-weight 1 --ce-weight C`` (C =
  ``--ce-weight``, default 1: the logit loss added to the same CE, as ULD's paper and TRL's
  GOLD train).

Scored before training, after each method, and the teacher: bits per byte of the teacher's
answers to the held-out prompts (:func:`nexus.retention.measures.score_heldout`; the teacher's
own figure is on its own greedy text), and PIQA accuracy (``--piqa-limit`` rows, the retention
report's scorer). Intervals: Student-t over texts (bits per byte), Wilson (PIQA); p against
``seqkd``: paired t-test over texts, exact McNemar over PIQA rows. Per method: wall seconds of
its ``nexus distill`` process and its peak RSS. Writes ``OUT/results.json`` and
``OUT/results.md``; a stage whose result is already in ``OUT`` with the same settings is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("seqkd", "uld", "align")
PROMPT_TASKS = ("self_instruct", "code_alpaca", "gsm8k")  # shared sets with a train/eval split
# --smoke: a few minutes end to end, to check the pipeline before the real run
SMOKE = {"steps": 2, "batch": 2, "seq_len": 128, "train_prompts": 8, "heldout_prompts": 4, "piqa_limit": 20}
FULL = {
    "steps": 32,
    "batch": 4,
    "seq_len": 256,
    "train_prompts": 256,
    "heldout_prompts": 64,
    "piqa_limit": None,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="gemma3-270m", help="teacher spec (default: gemma3-270m)")
    p.add_argument("--student", help="student spec with its own tokenizer (HF dir, saved plan student)")
    p.add_argument("--student-base", default="default",
                   help="without --student: this model pruned to 2/3 of its layers (default: default)")  # fmt: skip
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, help=f"optimizer steps per method (default {FULL['steps']})")
    p.add_argument("--batch", type=int, help=f"rows per step (default {FULL['batch']})")
    p.add_argument("--seq-len", type=int, help=f"packed row length (default {FULL['seq_len']})")
    p.add_argument("--train-prompts", type=int, help=f"training prompts (default {FULL['train_prompts']})")
    p.add_argument(
        "--heldout-prompts", type=int, help=f"held-out prompts (default {FULL['heldout_prompts']})"
    )
    p.add_argument("--piqa-limit", type=int, help="PIQA rows (default: all 1338 shared rows)")
    p.add_argument("--smoke", action="store_true", help=f"small defaults for a quick check: {SMOKE}")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default: phase 2's 2e-4)")
    p.add_argument("--ce-weight", type=float, default=1.0, help="CE weight of uld/align (default 1)")
    p.add_argument("--loss-on", choices=("all", "response"), default="response",
                   help="tokens trained on (default: response, the teacher's text)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="training and prompt-draw seed")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--device", help="cpu, cuda (default: cuda if present)")
    p.add_argument("--data-dir", help="folder of the public sets (default: ../shared/data)")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, runs)")
    args = p.parse_args(argv)
    preset = SMOKE if args.smoke else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        p.error(
            f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
        )
    for name in ("steps", "batch", "seq_len", "train_prompts", "heldout_prompts", "piqa_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


# -- data -------------------------------------------------------------------------------------


def shared_prompts(split: str, n: int, seed: int, data_dir: str | None) -> list:
    """``n`` chat examples of ``split`` ("train" or "eval", :func:`nexus.data.splits.split_of`),
    drawn round-robin from the shuffled rows of each set in :data:`PROMPT_TASKS`."""
    from nexus.benchmark.tasks import resolve_task_specs
    from nexus.data.formats import load_examples
    from nexus.data.splits import split_of

    pools = []
    for spec in resolve_task_specs(list(PROMPT_TASKS), Path(data_dir) if data_dir else None):
        rows = [ex for ex in load_examples(spec.source) if ex.prompt and split_of(ex) == split]
        random.Random(seed).shuffle(rows)
        pools.append(rows)
    chosen = [pool[i] for i in range(max(map(len, pools))) for pool in pools if i < len(pool)]
    return chosen[:n]


def write_prompts(examples: list, path: Path) -> Path:
    """prompt -> response rows (the reference responses; ``--seq-kd`` replaces them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": ex.prompt, "response": ex.response, "domain": ex.domain} for ex in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- models -----------------------------------------------------------------------------------


def build_default_student(base: str, out: Path) -> Path:
    """``base`` pruned to 2/3 of its layers, as ``nexus distill`` builds its default student."""
    from nexus.distillation.student import pruned_student
    from nexus.models import load_model, load_tokenizer, save_student
    from nexus.models.depth import DEFAULT_SHARE

    model, resolved = load_model(base)
    pruned = pruned_student(model, teacher_name=base, student_layers=DEFAULT_SHARE)
    save_student(pruned.model, out, tokenizer=load_tokenizer(resolved))
    print(f"student: {base}, {pruned.description} -> {out}", flush=True)
    return out


def load_lm(role: str, spec: str, cfg):
    from nexus.benchmark.runner import load_for_benchmark
    from nexus.retention.measures import bench_config

    return load_for_benchmark(role, spec, bench_config(cfg))


def score(lm, piqa, texts: list[str], cfg) -> dict[str, Any]:
    """PIQA rows (``correct``) and bits per byte of each held-out text (``bpb``)."""
    from nexus.retention.measures import score_heldout, score_task

    t0 = time.perf_counter()
    out = {"piqa": score_task(lm, piqa, cfg)["correct"], "bpb": score_heldout(None, lm, texts, cfg)["bpb"]}
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


# -- training ---------------------------------------------------------------------------------


def distill_command(
    method: str, args, student: str, train_file: Path, data_cache: Path, run: Path
) -> list[str]:
    """The ``nexus distill`` command line of one method (all share everything but the loss)."""
    loss = {
        "seqkd": ["--kd-weight", "0", "--ce-weight", "1"],
        "uld": ["--cross-tokenizer", "uld", "--kd-weight", "1", "--ce-weight", str(args.ce_weight)],
        "align": ["--cross-tokenizer", "align", "--kd-weight", "1", "--ce-weight", str(args.ce_weight)],
    }[method]
    cmd = [sys.executable, "-m", "nexus", "distill", "--teacher", args.teacher, "--student", student,
           "--data", str(train_file), "--seq-kd", *loss, "--max-steps", str(args.steps),
           "--warmup-steps", str(max(1, args.steps // 10)), "--batch-size", str(args.batch),
           "--seq-len", str(args.seq_len), "--lr", str(args.lr), "--seed", str(args.seed),
           "--loss-on", args.loss_on, "--heldout-fraction", "0", "--eval-every", "0",
           "--save-every", str(args.steps), "--precision", args.precision,
           "--data-cache-dir", str(data_cache), "--out", str(run / "distill"),
           "--results", str(run / "results"), "--flags", str(run / "flags")]  # fmt: skip
    return cmd + (["--device", args.device] if args.device else [])


def run_method(cmd: list[str], run: Path) -> dict[str, Any]:
    """Run one ``nexus distill`` from scratch; its wall time, peak RSS (its own, from wait4) and
    the summary it wrote."""
    import shutil

    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    print("$ nexus " + " ".join(cmd[3:]), flush=True)
    with open(run / "distill.log", "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = (run / "distill.log").read_text().splitlines()[-15:]
        raise SystemExit(f"nexus distill failed (exit {code}), {run / 'distill.log'}:\n" + "\n".join(tail))
    summary = json.loads((run / "distill" / "summary.json").read_text())
    return {
        "model": str(run / "distill" / "model"),
        "train_tokens": summary["tokens_seen"],
        "wall_s": round(wall, 1),
        "tokens_per_s": summary["tokens_per_second"],
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # KiB on Linux
        "loss": summary["loss"],
    }


def train_rows(data_cache: Path) -> int | None:
    """Packed training rows of the methods' one shared corpus (its data-cache entry)."""
    metas = list(data_cache.glob("*/meta.json"))
    return json.loads(metas[0].read_text())["train_rows"] if len(metas) == 1 else None


# -- reporting --------------------------------------------------------------------------------


def summarize(result: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    from nexus.benchmark import stats

    correct, bpb = result["piqa"], result["bpb"]
    out = {
        "bpb": sum(bpb) / len(bpb),
        "bpb_ci95": list(stats.mean_interval(bpb)),
        "piqa": sum(correct) / len(correct),
        "piqa_ci95": list(stats.wilson_interval(sum(correct), len(correct))),
        "p_bpb_vs_seqkd": None,
        "p_piqa_vs_seqkd": None,
    }
    if baseline is not None and baseline is not result:
        out["p_bpb_vs_seqkd"] = stats.paired_t_p(baseline["bpb"], bpb)
        out["p_piqa_vs_seqkd"] = stats.mcnemar_exact(baseline["piqa"], correct)["p_value"]
    return out


def progress(name: str, r: dict[str, Any]) -> None:
    parts = []
    if "train_tokens" in r:
        speed = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "?"
        parts += [f"{r['train_tokens']:,} tokens in {r['wall_s']:.0f} s wall ({speed} tokens/s in training)",
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB"]  # fmt: skip
    parts += [f"bpb {sum(r['bpb']) / len(r['bpb']):.3f}", f"PIQA {sum(r['piqa']) / len(r['piqa']):.1%}",
              f"scored in {r['eval_s']:.0f} s"]  # fmt: skip
    print(f"{name}: " + ", ".join(parts), flush=True)


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    def ci(value: float, bounds: list[float], fmt: str) -> str:
        return f"{value:{fmt}} ({bounds[0]:{fmt}}-{bounds[1]:{fmt}})"

    def p(value: float | None) -> str:
        return "-" if value is None else f"{value:.2g}"

    lines = [
        "| method | train tokens | wall s | peak RSS GiB | held-out bpb (95% CI) | PIQA (95% CI) | p vs seqkd (bpb / PIQA) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        tokens = f"{r['train_tokens']:,}" if "train_tokens" in r else "-"
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        rss = f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "-"
        lines.append(
            f"| {name} | {tokens} | {wall} | {rss} | {ci(r['bpb'], r['bpb_ci95'], '.3f')} | "
            f"{ci(100 * r['piqa'], [100 * x for x in r['piqa_ci95']], '.1f').replace(' ', '% ', 1)} | "
            f"{p(r['p_bpb_vs_seqkd'])} / {p(r['p_piqa_vs_seqkd'])} |"
        )
    return "\n".join(lines) + "\n"


def cached(path: Path, settings: dict[str, Any], compute) -> dict[str, Any]:
    """``compute()``, or the result saved at ``path`` by an earlier run with equal ``settings``."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            print(f"reusing {path}", flush=True)
            return saved["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "result": result}))
    return result


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from nexus.errors import NexusError

    args = parse_args(argv)
    try:
        return run(args)
    except NexusError as exc:  # a model or data set that cannot be read: one line
        print(f"bench_cross_tokenizer: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from nexus.data.builtin import teacher_answers
    from nexus.retention.config import RetentionConfig
    from nexus.retention.measures import load_measure_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    cfg = RetentionConfig(measures=["piqa", "heldout"], piqa_limit=args.piqa_limit, precision=args.precision,
                          device=args.device, data_dir=args.data_dir, plot=False)  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "methods", "smoke")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    # -- setup: student, prompts ---------------------------------------------------------------
    student = args.student or str(build_default_student(args.student_base, out / "student_init"))
    train = shared_prompts("train", args.train_prompts, args.seed, args.data_dir)
    heldout = shared_prompts("eval", args.heldout_prompts, args.seed, args.data_dir)
    train_file = write_prompts(train, out / "train_prompts.jsonl")
    print(f"prompts: {len(train)} training ({train_file}), {len(heldout)} held-out", flush=True)
    piqa = load_measure_task("piqa", cfg)

    # -- teacher: answers once (cached on disk), its own scores ------------------------------------
    t0 = time.perf_counter()
    teacher = load_lm("teacher", args.teacher, cfg)
    # The same call on the same prompts as `nexus distill --seq-kd` (the teacher loaded in the same
    # dtype), so the methods read these answers from the cache.
    teacher_answers(teacher.model, teacher.tokenizer, [replace(ex) for ex in train])
    answered = teacher_answers(teacher.model, teacher.tokenizer, [replace(ex) for ex in heldout])
    texts = [ex.response for ex in answered if ex.response.strip()]
    if not texts:
        raise SystemExit("the teacher's answers to the held-out prompts are all empty: nothing to score")
    print(
        f"teacher answers: {len(texts)} non-empty held-out texts, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    results = {"teacher": cached(out / "teacher.json", settings, lambda: score(teacher, piqa, texts, cfg))}
    teacher = None  # freed before the students train
    progress("teacher", results["teacher"])
    results["before"] = cached(
        out / "before.json", settings, lambda: score(load_lm("student", student, cfg), piqa, texts, cfg)
    )
    progress("before", results["before"])

    # -- methods at equal tokens ---------------------------------------------------------------
    data_cache = out / "data_cache" / key
    for method in args.methods:
        run = out / method

        def train_and_score(method=method, run=run) -> dict[str, Any]:
            res = run_method(distill_command(method, args, student, train_file, data_cache, run), run)
            res.update(score(load_lm("student", res["model"], cfg), piqa, texts, cfg))
            return res

        results[method] = cached(run.parent / f"{method}.json", settings, train_and_score)
        progress(method, results[method])

    # -- report --------------------------------------------------------------------------------
    baseline = results.get("seqkd")
    # p against the baseline for the students (the teacher's own text is no paired comparison)
    table = {name: {**{k: v for k, v in r.items() if k not in ("piqa", "bpb")},
                    **summarize(r, baseline if name != "teacher" else None)}
             for name, r in results.items()}  # fmt: skip
    rows = train_rows(data_cache)
    report = {
        "settings": settings,
        "methods": args.methods,
        "student": student,
        "data": {
            "train_prompts": len(train),
            "heldout_texts": len(texts),
            "piqa_rows": len(piqa.items),
            "train_rows": rows,
            "passes": args.steps * args.batch / rows if rows else None,
        },
        "table": table,
        "per_row": {name: {"piqa": r["piqa"], "bpb": r["bpb"]} for name, r in results.items()},
        "wall_s": round(time.perf_counter() - began, 1),
        "peak_rss_gib_benchmark": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    markdown = markdown_table(table)
    (out / "results.json").write_text(json.dumps(report, indent=2, allow_nan=True))
    (out / "results.md").write_text(markdown)
    passes = f"{report['data']['passes']:.2f}" if rows else "?"
    print(f"\n{args.teacher} -> {student}: {len(train)} training prompts ({rows} rows of {args.seq_len}, "
          f"{passes} passes), {len(texts)} held-out texts, {len(piqa.items)} PIQA rows, "
          f"{report['wall_s']:.0f} s in all; benchmark process peak RSS "
          f"{report['peak_rss_gib_benchmark']:.2f} GiB\n", flush=True)  # fmt: skip
    print(markdown, flush=True)
    return 0 if all(math.isfinite(table[m]["bpb"]) for m in args.methods) else 1


if __name__ == "__main__":
    raise SystemExit(main())
