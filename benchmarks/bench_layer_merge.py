"""Does merging the removed layers into the kept ones start a pruned student closer to its teacher?

    .venv/bin/python benchmarks/bench_layer_merge.py --plan results/profile/student_plan.json
    .venv/bin/python benchmarks/bench_layer_merge.py --plan PLAN --weight 0 --weight 0.05 --piqa-tune

Layer merging (LaCo, Yang et al. 2024) folds each removed layer into a kept neighbour instead of
dropping it. Here every removed layer goes to the nearest kept layer below it (the first kept
layer if none is below), and the kept layer's matrices become ``theta_k + w * mean_r(theta_r -
theta_k)`` over its ``m`` removed layers ``r`` (norm weights stay): ``w = 0`` is plain pruning,
``w = m/(m+1)`` the plain average of the ``m + 1`` layers, ``--laco`` the paper's sum
``theta_k + sum_r(theta_r - theta_k)``.

Each variant is scored like the retention report's "untrained plan student"
(:mod:`nexus.retention.measures`): KL(teacher || student), top-1 agreement and bits per byte on
the held-out evaluation texts, and with ``--piqa-tune`` PIQA on the tune part of the shared rows
(the untuned part is never used for such decisions). ``docs/quality.md`` has the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch


def merge_into_kept(teacher, student, keep: list[int], *, weight: float | None) -> None:
    """Fold each removed teacher layer into the student's copy of the nearest kept layer below it.

    ``weight``: ``theta_k + weight * mean_r(theta_r - theta_k)``; None: LaCo's
    ``theta_k + sum_r(theta_r - theta_k)``. Norm weights are left as copied."""
    from nexus.models import decoder_layers

    t_layers, s_layers = decoder_layers(teacher), decoder_layers(student)
    groups: dict[int, list[int]] = {}
    for r in (i for i in range(len(t_layers)) if i not in keep):
        below = [k for k in keep if k < r]
        groups.setdefault(below[-1] if below else keep[0], []).append(r)
    with torch.no_grad():
        for k, removed in groups.items():
            base = dict(t_layers[k].named_parameters())
            others = [dict(t_layers[r].named_parameters()) for r in removed]
            for name, p in s_layers[keep.index(k)].named_parameters():
                if "norm" in name:
                    continue
                diffs = torch.stack([o[name] - base[name] for o in others])
                p.copy_(base[name] + (diffs.sum(0) if weight is None else weight * diffs.mean(0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="default")
    ap.add_argument("--plan", required=True, help="a student_plan.json (its keep_layers)")
    ap.add_argument(
        "--weight",
        type=float,
        action="append",
        help="merge weight w (repeatable; default 0, 0.05, 0.15, 0.5)",
    )
    ap.add_argument("--laco", action="store_true", help="also LaCo's sum of differences")
    ap.add_argument("--heldout", type=int, default=64, help="held-out texts (default 64)")
    ap.add_argument("--piqa-tune", action="store_true", help="also PIQA on the tune part of the shared rows")
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default ../shared/data)")
    args = ap.parse_args()

    from nexus.benchmark import scoring
    from nexus.benchmark.runner import load_for_benchmark
    from nexus.distillation.student import pruned_student, read_plan
    from nexus.models import count_parameters, decoder_layers, load_model
    from nexus.retention import measures
    from nexus.retention.config import RetentionConfig

    cfg = RetentionConfig(
        heldout_limit=args.heldout, **({"data_dir": args.data_dir} if args.data_dir else {})
    )
    teacher = load_for_benchmark("teacher", args.teacher, measures.bench_config(cfg))
    full, _ = load_model(args.teacher)
    keep = read_plan(args.plan)["keep_layers"]
    texts = measures.heldout_texts(cfg)
    piqa = None
    if args.piqa_tune:
        piqa = measures.load_measure_task("piqa", cfg)
        sides = measures.tuning_sides(piqa)
        piqa = dataclasses.replace(
            piqa, items=[it for it, s in zip(piqa.items, sides, strict=True) if s == "tune"]
        )

    variants: list[tuple[str, float | None]] = [
        (f"w={w:g}", w) for w in (args.weight or [0.0, 0.05, 0.15, 0.5])
    ]
    if args.laco:
        variants.append(("laco (sum)", None))
    print(
        f"plan {args.plan}: {len(keep)} of {len(decoder_layers(full))} layers kept, {len(texts)} held-out texts"
    )
    print("| merge | held-out KL | top-1 agreement | bits/byte |" + (" PIQA tune |" if piqa else "") + " s |")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if piqa else "") + " ---: |")
    for name, weight in variants:
        t0 = time.perf_counter()
        student = pruned_student(full, teacher_name=args.teacher, plan=args.plan).model
        if weight != 0.0:
            merge_into_kept(full, student, keep, weight=weight)
        student = student.to(dtype=teacher.dtype).eval()
        lm = scoring.LoadedModel("student", name, student, teacher.tokenizer, teacher.device, teacher.dtype,
                                 count_parameters(student), name)  # fmt: skip
        h = measures.score_heldout(teacher, lm, texts, cfg)
        cells = [statistics.fmean(h["kl"]), statistics.fmean(h["top1"]) * 100, statistics.fmean(h["bpb"])]
        line = f"| {name} | {cells[0]:.3f} | {cells[1]:.1f}% | {cells[2]:.3f} |"
        if piqa is not None:
            correct = measures.score_task(lm, piqa, cfg)["correct"]
            line += f" {100 * sum(correct) / len(correct):.2f}% (n={len(correct)}) |"
        print(line + f" {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
