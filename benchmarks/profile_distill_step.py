"""Where a live distillation step spends its time, and what the fused LM-head loss costs.

    .venv/bin/python benchmarks/profile_distill_step.py            # default teacher -> 10-layer student
    .venv/bin/python benchmarks/profile_distill_step.py --torch-profile   # plus torch.profiler's top ops

Part 1 runs the loop's own pieces (``LiveTeacherSource``, ``StudentLoss`` with the fused loss,
backward, clipping + fused AdamW) on the same data, models and batch as ``bench_distill.py``
(4 x 256, bf16) and prints the median seconds of each part. Part 2 times the LM-head loss of the
same number of tokens alone (49k vocabulary, bf16 compute): the fused closed-form loss with
cache-sized row blocks (the default), with whole-chunk row blocks, and the plain full-logit
autograd reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def _median(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_split(args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_distill

    from nexus.hardware import autocast
    from nexus.trainer.settings import TrainSettings
    from nexus.trainer.step import StudentLoss
    from nexus.trainer.teacher import LiveTeacherSource

    ns = argparse.Namespace(random_teacher=None, tokenizer=None, student_layers=args.student_layers,
                            seq_len=args.seq_len, work=args.work, batch=args.batch)  # fmt: skip
    teacher, student, tokenizer = bench_distill._models(ns)
    rows = bench_distill._rows(ns, tokenizer, teacher.config.vocab_size)
    source = LiveTeacherSource(teacher, dtype=torch.bfloat16)
    module = StudentLoss(student.train(), TrainSettings(precision="bf16"), compute_dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    cpu = torch.device("cpu")
    parts: dict[str, list[float]] = {
        "teacher forward": [],
        "student forward + fused loss": [],
        "student backward": [],
        "clip + AdamW": [],
    }

    def step(i: int) -> list[float]:
        idx = np.arange(i * args.batch, (i + 1) * args.batch) % len(rows)
        batch = rows.batch(idx)
        n = int(batch["loss_mask"].sum())
        t = [time.perf_counter()]
        with autocast("bf16", cpu):
            targets = source(batch, idx)
            t.append(time.perf_counter())
            loss, _ = module(batch, targets, n)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    for i in range(2):
        step(i)
    for i in range(2, 2 + args.steps):
        for name, seconds in zip(parts, step(i), strict=True):
            parts[name].append(seconds)
    medians = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(medians.values())
    tokens = args.batch * args.seq_len
    print(f"one step, batch {args.batch} x {args.seq_len}, median of {args.steps} steps:")
    for name, seconds in medians.items():
        print(f"  {name:<30} {seconds:6.3f} s  {100 * seconds / total:4.0f}%")
    print(f"  {'total':<30} {total:6.3f} s  ({tokens / total:.0f} tokens/s)")
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(99)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def loss_variants(args) -> None:
    import torch

    from nexus.trainer.fused import LiveTeacher, fused_lm_head_loss, reference_lm_head_loss

    torch.manual_seed(0)
    n, hidden, vocab = args.batch * (args.seq_len - 1), 576, 49152
    h = torch.randn(n, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * 0.05).requires_grad_(True)
    th, tw = torch.randn(n, hidden).bfloat16(), (torch.randn(vocab, hidden) * 0.05).bfloat16()
    labels = torch.randint(0, vocab, (n,))

    def fused(row_block):
        def run():
            loss, _, _ = fused_lm_head_loss(h, w, labels, LiveTeacher(th, tw), normalizer=n,
                                            compute_dtype=torch.bfloat16, row_block=row_block)  # fmt: skip
            loss.backward()

        return run

    def reference():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = reference_lm_head_loss(h, w, labels, th @ tw.t(), normalizer=n)
        loss.backward()

    print(
        f"LM-head loss of {n} tokens, vocabulary {vocab}, forward KL, bf16 compute (fwd + bwd), median of {args.repeat}:"
    )
    for name, fn in (
        ("fused, closed form, cache-sized row blocks", fused(None)),
        ("fused, closed form, whole-chunk rows", fused(1024)),
        ("full logits + autograd (reference)", reference),
    ):
        print(f"  {name:<45} {_median(fn, args.repeat):6.3f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each loss variant")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--student-layers", type=int, default=10)
    p.add_argument("--work", default="/tmp/nexus-bench-distill")
    p.add_argument("--torch-profile", action="store_true", help="print torch.profiler's top ops of one step")
    args = p.parse_args()
    step_split(args)
    loss_variants(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
