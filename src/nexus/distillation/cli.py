"""`nexus distill`: phase 2 from the command line (YAML section ``distill:`` + flags)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# flag dest -> DistillConfig field
_FLAG_FIELDS = {
    "teacher": "teacher",
    "student": "student",
    "plan": "plan",
    "student_layers": "student_layers",
    "data": "data",
    "out": "out",
    "max_steps": "max_steps",
    "seq_len": "seq_len",
    "batch_size": "micro_batch_size",
    "grad_accum": "grad_accum",
    "lr": "lr",
    "kd": "kd_kind",
    "temperature": "temperature",
    "ce_weight": "ce_weight",
    "anchor_weight": "anchor_weight",
    "topk": "topk",
    "teacher_cache": "teacher_cache_dir",
    "precision": "precision",
    "device": "device",
    "seed": "seed",
    "distributed": "distributed",
    "teacher_sharding": "teacher_sharding",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="phase 2: distill the teacher into a smaller student (KD + ActivationAnchoringLoss)",
        description="Distill a teacher into a student. With only --teacher, the student is the teacher "
        "depth-pruned to evenly spread layers and the data is the built-in offline corpus. Re-running on an "
        "output directory with checkpoints resumes from the newest one.",
    )
    p.add_argument("--config", help="YAML config file (its 'distill:' section)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--teacher", help="teacher model spec (default: default)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--student", help="student model spec (same vocabulary as the teacher)")
    who.add_argument("--plan", help="student_plan.json from `nexus profile` (keep_layers, anchor_pairs)")
    p.add_argument(
        "--student-layers", type=int, help="without --student/--plan: evenly spread layers to keep"
    )
    p.add_argument(
        "--data", nargs="+", help="data sources: JSONL/JSON/text files, directories, hf:NAME, builtin"
    )
    p.add_argument("--out", help="output directory (default: <results>/distill)")
    p.add_argument("--results", default="results", help="results directory (status.json; default: results)")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--seq-len", type=int, help="packed sequence length")
    p.add_argument("--batch-size", type=int, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--kd", choices=("forward_kl", "reverse_kl", "jsd"), help="KD divergence")
    p.add_argument("--temperature", type=float, help="KD temperature")
    p.add_argument("--ce-weight", type=float, help="weight of CE on the data's tokens")
    p.add_argument("--anchor-weight", type=float, help="weight of ActivationAnchoringLoss (0 = off)")
    p.add_argument(
        "--cache-teacher", action="store_true", default=None, help="cache teacher top-k once, train from it"
    )
    p.add_argument("--cache-only", action="store_true", help="build the teacher cache and stop")
    p.add_argument("--topk", type=int, help="teacher logits kept per token in the cache")
    p.add_argument("--teacher-cache", help="teacher cache directory (root, or a built cache to reuse)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="training precision")
    p.add_argument("--device", help="cpu, cuda, cuda:1")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--distributed",
        choices=("auto", "ddp", "fsdp"),
        help="multi-process mode (auto: FSDP under an accelerate FSDP config, else DDP under torchrun)",
    )
    p.add_argument(
        "--teacher-sharding",
        choices=("auto", "replicate", "fsdp"),
        help="live teacher: whole on every process, or FSDP-sharded (auto: sharded when the student is)",
    )
    p.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    p.set_defaults(func=_distill)


def _distill(args: argparse.Namespace) -> int:
    import sys

    from nexus.config import load_config, parse_overrides
    from nexus.distillation.config import DistillConfig
    from nexus.distillation.run import run_distill
    from nexus.monitor import Flags, StatusPrinter
    from nexus.pipeline.lock import single_phase_run

    overrides = parse_overrides(args.set)
    for dest, name in _FLAG_FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides[name] = value
    if args.cache_teacher or args.cache_only:
        overrides["cache_teacher"] = True
    cfg = load_config(
        DistillConfig, args.config, section="distill" if args.config else None, overrides=overrides
    )
    printer = StatusPrinter(sys.stderr, min_interval=1.0)
    flags = Flags(Path(args.flags))
    with single_phase_run(args.results, flags, printer):
        summary = run_distill(
            cfg, results_dir=Path(args.results), flags=flags, printer=printer, cache_only=args.cache_only
        )
    if os.environ.get("RANK", "0") == "0":  # one summary per run, not one per process
        print(json.dumps(summary, indent=2, default=str))
    return 0
