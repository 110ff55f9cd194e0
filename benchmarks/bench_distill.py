"""Distillation throughput: naive fp32 / bf16 full-logit KD vs Nexus (chunked, cached), TRL GKD.

    .venv/bin/python benchmarks/bench_distill.py --steps 10 --repeat 2   # real default teacher
    .venv/bin/python benchmarks/bench_distill.py --steps 10 --random-teacher 1b   # GPU: random 1B teacher

Every configuration runs in its own subprocess (so peak RSS is its own), on the same packed data
(the built-in corpus without the chat part: stdlib code + generated math), the same teacher and
the same student (the teacher depth-pruned to ``--student-layers`` evenly spread layers), batch 4 x
256 by default. Timed steps exclude ``--warmup`` steps; the median step time gives tokens/s.
Achieved FLOP/s counts ``2 * N_teacher + 6 * N_student`` per token (teacher term dropped with the
cache; N without the embedding table, whose lookup costs no matmul, but with the LM head) against
a bf16 matmul measured in the same run.

On-policy KD (opt-in: ``--modes nexus-onpolicy,trl-onpolicy``): Nexus with ``lmbda = 1`` against
TRL's ``DistillationTrainer`` (always on-policy), both forward KL in bf16, on the same built-in
chat prompts in the same order, batch ``--batch``, each completion exactly ``--completion-len``
tokens (EOS held back), so both do the same work: a step is generation + teacher scoring +
the update. tokens/s counts prompt + completion tokens; the FLOP/s column counts the update only.

    .venv/bin/python benchmarks/bench_distill.py --modes nexus-onpolicy,trl-onpolicy --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "naive-fp32": "naive loop, fp32, full B x T x V logits of both models, forward KL",
    "naive-bf16": "naive loop, bf16 autocast (teacher bf16), full logits, forward KL",
    "nexus-bf16": "Nexus loop, bf16, chunked fused LM-head loss, forward KL",
    "nexus-bf16-jsd": "Nexus loop, bf16, chunked, JSD beta=0.5",
    "nexus-cached": "Nexus loop, bf16, cached top-k teacher (training only)",
    "trl-gkd-fkl": "TRL GKDTrainer lmbda=0 beta=0 (forward KL), bf16",
    "trl-gkd-jsd": "TRL GKDTrainer lmbda=0 beta=0.5 (JSD), bf16",
    "nexus-onpolicy": "Nexus loop, bf16, lmbda=1: the student samples, the teacher scores (forward KL)",
    "trl-onpolicy": "TRL DistillationTrainer (always on-policy) beta=0 (forward KL), bf16",
}
ONPOLICY = ("nexus-onpolicy", "trl-onpolicy")  # modes timed on --completion-len completions of chat prompts


def _models(args):
    import torch

    from nexus.distillation.student import evenly_spread_layers
    from nexus.models import build_student, decoder_layers, load_model, load_tokenizer

    if args.random_teacher:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        sizes = {"1b": (2048, 16, 8192, 32, 8), "135m": (576, 30, 1536, 9, 3)}
        hidden, layers, inter, heads, kv = sizes[args.random_teacher]
        cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                          num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                          tie_word_embeddings=True)  # fmt: skip
        torch.manual_seed(0)
        teacher = LlamaForCausalLM(cfg).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    else:
        teacher, resolved = load_model("default")
        tokenizer = load_tokenizer(resolved)
    keep = evenly_spread_layers(len(decoder_layers(teacher)), args.student_layers)
    student = build_student(teacher, keep, teacher_name="bench").float()
    return teacher, student, tokenizer


def _rows(args, tokenizer, vocab: int):
    import numpy as np

    from nexus.data.packing import PackedRows

    if tokenizer is None:  # random models on a device machine: random token rows of the same shape
        rng = np.random.default_rng(0)
        n = 64
        ids = rng.integers(0, vocab, (n, args.seq_len), dtype=np.int32)
        pos = np.tile(np.arange(args.seq_len, dtype=np.int32), (n, 1))
        labels = np.concatenate([ids[:, 1:], np.full((n, 1), -100, np.int32)], 1)
        return PackedRows(ids, pos, labels)
    from nexus.data.corpus import build_corpus

    corpus = build_corpus(["builtin:code=120,math=300,chat=0"], tokenizer, seq_len=args.seq_len, heldout_fraction=0.0,
                          cache_dir=Path(args.work) / "data_cache")  # fmt: skip
    return corpus.train


def _chat_prompts(args, tokenizer) -> list[str]:
    """The built-in chat prompts in the chat template, as text: TRL tokenizes them itself and
    Nexus gets the same tokenizer's ids, so both decode from exactly the same prompts."""
    from nexus.data.builtin import CHAT_PROMPTS
    from nexus.data.templates import render_prompt

    n = (args.warmup + args.steps) * args.batch
    return [render_prompt(tokenizer, CHAT_PROMPTS[i % len(CHAT_PROMPTS)]) for i in range(n)]


def _params(model, with_teacher_head=True) -> int:
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    head = model.get_output_embeddings().weight.numel()
    # tied: the head matmul is real work although the tensor is shared with the embedding
    return (
        total - emb + (head if with_teacher_head else 0) if model.config.tie_word_embeddings else total - emb
    )


def _matmul_flops(device) -> float:
    import torch

    n = 2048
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def _naive(args, teacher, student, rows, device, bf16: bool) -> list[float]:
    import numpy as np
    import torch

    from nexus.hardware import autocast
    from nexus.trainer.divergence import kd_loss

    teacher.to(device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times = []
    for step in range(args.warmup + args.steps):
        idx = np.arange(step * args.batch, (step + 1) * args.batch) % len(rows)
        batch = {k: v.to(device) for k, v in rows.batch(idx).items()}
        t0 = time.perf_counter()
        with autocast("bf16" if bf16 else "fp32", device):
            with torch.no_grad():
                t_logits = teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            s_logits = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        mask = batch["loss_mask"]
        loss = kd_loss(s_logits[mask], t_logits[mask]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[args.warmup :]


def _nexus(args, teacher, student, rows, device, mode: str) -> tuple[list[float], dict]:
    import numpy as np
    import torch

    from nexus.trainer.cache import build_teacher_cache
    from nexus.trainer.evaluate import evaluate_fidelity
    from nexus.trainer.loop import Trainer
    from nexus.trainer.settings import TrainSettings
    from nexus.trainer.teacher import LiveTeacherSource

    extra = {}
    work = Path(args.work) / mode
    onpolicy = None
    if mode == "nexus-onpolicy":
        from nexus.trainer.onpolicy import OnPolicyBatches, OnPolicySettings

        prompts = [
            np.asarray(ids)
            for ids in args.tokenizer_obj(_chat_prompts(args, args.tokenizer_obj))["input_ids"]
        ]
        onpolicy = OnPolicyBatches(prompts, OnPolicySettings(lmbda=1.0, max_new_tokens=args.completion_len,
                                   temperature=1.0, seed=0), pad_id=args.tokenizer_obj.pad_token_id or 0,
                                   eos_ids=[args.tokenizer_obj.eos_token_id], precision="bf16")  # fmt: skip
        onpolicy.min_new_tokens = (
            args.completion_len
        )  # every completion is --completion-len long, as in TRL's
        onpolicy.step_prompts = lambda step, gb: (
            np.arange(step * gb, (step + 1) * gb) % len(prompts)
        )  # TRL's order
        extra["prompt_tokens_mean"] = round(float(np.mean([len(p) for p in prompts])), 1)
    if mode == "nexus-cached":
        shutil.rmtree(work / "teacher_cache", ignore_errors=True)  # every round times a full build
        t0 = time.perf_counter()
        cache = build_teacher_cache(work / "teacher_cache", teacher.to(device), {"train": rows}, teacher_id="bench",
                                    data_key="bench", k=args.topk, batch_size=args.batch, device=device)  # fmt: skip
        extra["cache_build_seconds"] = round(time.perf_counter() - t0, 1)
        extra["cache_rows"] = len(rows)
        source = cache.source("train")
    else:
        source = LiveTeacherSource(teacher.to(device), dtype=torch.bfloat16)
    settings = TrainSettings(
        max_steps=args.warmup + args.steps, micro_batch_size=args.batch, precision="bf16",
        kd_kind="jsd" if mode.endswith("jsd") else "forward_kl", eval_every=0, save_every=10**9, warmup_steps=2,
        device=str(device),
    )  # fmt: skip
    loop = Trainer(student, tokenizer=None, train=rows, heldout=None, teacher=source, settings=settings,
                       out_dir=work / "out", run_config=settings, result_hash=mode,
                       results_dir=work / "results", onpolicy=onpolicy)  # fmt: skip
    loop.save_checkpoint = lambda: None  # the benchmark measures steps, not disk
    loop._save_final = lambda: None
    times = []
    real_step = loop._train_step

    def timed():
        t0 = time.perf_counter()
        out = real_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        return out

    loop._train_step = timed
    loop.fit()
    if args.eval_rows:
        live = LiveTeacherSource(teacher, dtype=torch.bfloat16)
        extra["heldout_kd"] = evaluate_fidelity(student, live, rows, max_rows=args.eval_rows, precision="bf16",
                                                device=device)["kd"]  # fmt: skip
    return times[args.warmup :], extra


def _step_timer(times: list[float]):
    """A TRL (transformers) callback class appending each optimizer step's seconds to ``times``."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    return Timer


def _trl(args, teacher, student, tokenizer, rows, device, beta: float) -> list[float]:
    import torch
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    n = (args.warmup + args.steps) * args.batch
    batch = rows.batch(list(range(n)))
    # GKD scores positions after inputs["prompts"]; a one-token prompt scores the whole row, like the others.
    ds = Dataset.from_dict({"input_ids": batch["input_ids"].tolist(), "attention_mask": [[1] * args.seq_len] * n,
                            "labels": batch["input_ids"].tolist(),
                            "prompts": batch["input_ids"][:, :1].tolist()})  # fmt: skip
    times: list[float] = []
    Timer = _step_timer(times)

    cfg = GKDConfig(output_dir=str(Path(args.work) / f"trl-{beta}"), per_device_train_batch_size=args.batch,
                    max_steps=args.warmup + args.steps, lmbda=0.0, beta=beta, bf16=True, use_cpu=device.type == "cpu",
                    report_to=[], logging_steps=1000, save_strategy="no", temperature=1.0, seq_kd=False,
                    max_length=args.seq_len, dataset_kwargs={"skip_prepare_dataset": True},
                    remove_unused_columns=False)  # fmt: skip
    trainer = GKDTrainer(model=student, teacher_model=teacher.to(torch.bfloat16), args=cfg, train_dataset=ds,
                         processing_class=tokenizer, callbacks=[Timer()])  # fmt: skip
    from transformers import default_data_collator

    trainer.data_collator = default_data_collator  # rows are already packed token ids, not chat messages
    trainer.train()
    return times[args.warmup :]


def _trl_onpolicy(args, teacher, student, tokenizer, device) -> list[float]:
    """TRL's DistillationTrainer on the same chat prompts, completions of exactly --completion-len."""
    import torch
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    times: list[float] = []
    Timer = _step_timer(times)

    cfg = DistillationConfig(output_dir=str(Path(args.work) / "trl-onpolicy"), per_device_train_batch_size=args.batch,
                             max_steps=args.warmup + args.steps, beta=0.0, temperature=1.0, bf16=True,
                             use_cpu=device.type == "cpu", report_to=[], logging_steps=1000, save_strategy="no",
                             max_completion_length=args.completion_len, shuffle_dataset=False, learning_rate=1e-4,
                             generation_kwargs={"min_new_tokens": args.completion_len})  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher.to(torch.bfloat16), args=cfg,
                                  train_dataset=Dataset.from_dict({"prompt": _chat_prompts(args, tokenizer)}),
                                  processing_class=tokenizer, callbacks=[Timer()])  # fmt: skip
    trainer.train()
    return times[args.warmup :]


def run_one(args) -> dict:
    import torch

    from nexus.hardware import pick_device

    torch.manual_seed(0)
    device = pick_device(args.device)
    teacher, student, tokenizer = _models(args)
    rows = _rows(args, tokenizer, teacher.config.vocab_size)
    extra: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.only.startswith("naive"):
        times = _naive(args, teacher, student, rows, device, bf16=args.only == "naive-bf16")
    elif args.only == "trl-onpolicy":
        times = _trl_onpolicy(args, teacher, student, tokenizer, device)
    elif args.only.startswith("trl"):
        times = _trl(
            args, teacher, student, tokenizer, rows, device, 0.0 if args.only == "trl-gkd-fkl" else 0.5
        )
    else:
        args.tokenizer_obj = tokenizer
        times, extra = _nexus(args, teacher, student, rows, device, args.only)
    median = statistics.median(times)
    tokens = args.batch * args.seq_len
    if args.only in ONPOLICY:  # the trained sequences: prompt + completion
        prompt = statistics.mean(len(ids) for ids in tokenizer(_chat_prompts(args, tokenizer))["input_ids"])
        tokens = args.batch * (prompt + args.completion_len)
    n_t, n_s = _params(teacher), _params(student)
    flops_per_token = (0 if args.only == "nexus-cached" else 2 * n_t) + 6 * n_s
    result = {
        "mode": args.only,
        "steps": len(times),
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "achieved_tflops": flops_per_token * tokens / median / 1e12,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "matmul_bf16_tflops": _matmul_flops(device) / 1e12,
        **extra,
    }
    return result


RATIOS = [
    ("nexus-bf16", "trl-gkd-fkl", 2),
    ("nexus-bf16-jsd", "trl-gkd-jsd", 3),
    ("nexus-cached", "trl-gkd-fkl", 4),
    ("nexus-onpolicy", "trl-onpolicy", 2),
]


def _median_run(runs: list[dict]) -> dict:
    """One mode's rounds as one result: the round with the median tokens/s, plus every round's."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds over all modes (interleaved); median round reported"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--student-layers", type=int, default=10)
    p.add_argument(
        "--completion-len", type=int, default=128, help="on-policy modes: tokens generated per prompt"
    )
    p.add_argument("--topk", type=int, default=512, help="cached top-k (the distill default)")
    p.add_argument(
        "--eval-rows", type=int, default=0, help="held-out KD after training (cached vs live quality)"
    )
    p.add_argument(
        "--modes",
        default=",".join(m for m in MODES if m not in ONPOLICY),
        help="comma-separated subset of: " + ", ".join(MODES),
    )
    p.add_argument(
        "--random-teacher", choices=("1b", "135m"), help="random Llama teacher instead of 'default'"
    )
    p.add_argument("--tokenizer", help="tokenizer dir for TRL with a random teacher")
    p.add_argument("--device", default=None)
    p.add_argument("--work", default="/tmp/nexus-bench-distill")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return 0
    modes = args.modes.split(",")
    if any(m.startswith("trl") for m in modes):
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl modes skipped (trl is not installed: pip install trl)", file=sys.stderr)
            modes = [m for m in modes if not m.startswith("trl")]
    runs: dict[str, list[dict]] = {}
    # Rounds interleave the modes, so a slow spell of a shared machine hits all of them alike.
    for round_ in range(args.repeat):
        for mode in modes:
            cmd = [sys.executable, __file__, "--only", mode, *_without_option(sys.argv[1:], "--json")]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            runs.setdefault(mode, []).append(json.loads(line[7:]))
            print(f"done {mode} (round {round_ + 1}/{args.repeat})", file=sys.stderr)
    results = [_median_run(rs) for rs in runs.values()]
    header = f"{'mode':<16} {'tok/s':>8} {'range':>13} {'step s':>7} {'TFLOP/s':>8} {'% bf16 mm':>9} {'RSS GiB':>8} {'GPU GiB':>8}  extra"
    print(header)
    for r in results:
        frac = 100 * r["achieved_tflops"] / r["matmul_bf16_tflops"]
        gpu = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "-"
        extra = {k: r[k] for k in ("cache_build_seconds", "heldout_kd") if k in r}
        span = f"{min(r['tokens_per_s_runs']):.0f}-{max(r['tokens_per_s_runs']):.0f}"
        print(f"{r['mode']:<16} {r['tokens_per_s']:>8.1f} {span:>13} {r['median_step_s']:>7.3f} {r['achieved_tflops']:>8.3f} "
              f"{frac:>8.1f}% {r['peak_rss_gib']:>8.2f} {gpu:>8}  {extra or ''}")  # fmt: skip
    if results:
        mm = statistics.median(r["matmul_bf16_tflops"] for r in results)
        print(f"bf16 matmul (2048^3, median over runs): {mm * 1000:.0f} GFLOP/s; batch {args.batch} x {args.seq_len}, "
              f"median of {args.steps} steps after {args.warmup} warm-up, {args.repeat} round(s)")  # fmt: skip
        by = {r["mode"]: r for r in results}
        for mine, base, target in RATIOS:
            if mine in by and base in by:
                ratio = by[mine]["tokens_per_s"] / by[base]["tokens_per_s"]
                print(f"{mine} / {base}: {ratio:.2f}x tokens/s (target {target}x)")
        cached, trl = by.get("nexus-cached"), by.get("trl-gkd-fkl")
        if cached and trl and "cache_build_seconds" in cached:
            # a second epoch reuses the cache: two epochs of the cached rows, the build included
            tokens = cached["cache_rows"] * args.seq_len
            nexus_s = cached["cache_build_seconds"] + 2 * tokens / cached["tokens_per_s"]
            ratio = (2 * tokens / trl["tokens_per_s"]) / nexus_s
            print(
                f"nexus-cached over two epochs, cache build included / trl-gkd-fkl: {ratio:.2f}x (target 4x)"
            )
        if "nexus-bf16" in by and "naive-fp32" in by:
            print(
                f"peak RSS nexus-bf16 / naive-fp32: {by['nexus-bf16']['peak_rss_gib'] / by['naive-fp32']['peak_rss_gib']:.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
