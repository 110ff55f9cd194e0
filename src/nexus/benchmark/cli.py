"""`nexus benchmark`: teacher vs student, head to head (usage guide section 3)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="compare a student with its teacher on code, math and chat tasks",
        description="Score the teacher and the student on the same items and report accuracy, the gap, "
        "paired significance, speed and distillation fidelity.",
    )
    parser.add_argument(
        "--student", help="student model (default: the newest nexus-release-v* directory here)"
    )
    parser.add_argument("--teacher", help="teacher model spec (default: 'default', SmolLM2-135M-Instruct)")
    parser.add_argument("--limit", type=int, help="items per task, drawn with a fixed seed (default 50)")
    parser.add_argument(
        "--tasks",
        help="comma-separated tasks: piqa, gsm8k, humaneval, code_alpaca, self_instruct, builtin-code, "
        "builtin-math, builtin-chat, hf-piqa, hf-gsm8k, hf-humaneval, 'builtin' (default), 'shared', or task .yaml files",
    )
    parser.add_argument("--out", default="results", help="results folder (default: results)")
    parser.add_argument("--data-dir", help="folder with the public sets (default: ../shared/data)")
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), help="model precision (default auto)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (1 helps on a crowded machine)")
    parser.add_argument("--batch-size", type=int, help="items per generation batch")
    parser.add_argument("--max-new-tokens", type=int, help="override every task's generation cap")
    parser.add_argument("--seed", type=int, help="seed of the --limit draw and the bootstrap")
    parser.add_argument(
        "--no-fidelity", action="store_true", help="skip the KL / top-1 agreement measurement"
    )
    parser.add_argument("--all", action="store_true", help="every item of every task (ignores --limit)")
    parser.add_argument(
        "--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks to run on both models"
    )
    parser.add_argument(
        "--training-data",
        help="comma-separated sources the student was trained on, for the 13-gram overlap check "
        "(default: read from the student's nexus_manifest.json or phase config.yaml)",
    )
    parser.add_argument(
        "--image-data",
        help="vision-language student: a JSONL / folder of image rows or hf:NAME[:SPLIT] to score "
        "(its held-out tenth; default: synthetic held-out pictures)",
    )
    parser.add_argument("--config", help="YAML file with a 'benchmark' section")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoints"
    )
    parser.add_argument(
        "--allow-unsandboxed-code",
        action="store_true",
        help="run code tasks even where the kernel gives no user/mount/network/PID namespaces to "
        "confine them (generated code then runs with resource limits and the in-process guard only)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nexus.multimodal.chat import is_vision_language

    if args.student and is_vision_language(args.student):
        return _run_vision(args)
    from nexus.benchmark.runner import BenchmarkConfig, run_benchmark
    from nexus.config import deep_merge, load_config, parse_overrides
    from nexus.monitor import StatusPrinter

    flags = {
        "student": args.student,
        "teacher": args.teacher,
        "limit": args.limit,
        "tasks": [t for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        "data_dir": args.data_dir,
        "precision": args.precision,
        "device": args.device,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "fidelity": False if args.no_fidelity else None,
        "lm_eval_tasks": [t for t in args.lm_eval_tasks.split(",") if t.strip()]
        if args.lm_eval_tasks
        else None,
        "trust_remote_code": True if args.trust_remote_code else None,
        "allow_unsandboxed_code": True if args.allow_unsandboxed_code else None,
        "training_data": [t.strip() for t in args.training_data.split(",") if t.strip()]
        if args.training_data
        else None,
    }
    overrides = deep_merge({k: v for k, v in flags.items() if v is not None}, parse_overrides(args.set))
    if args.all:
        overrides["limit"] = None
    cfg = load_config(
        BenchmarkConfig, args.config, section="benchmark" if args.config else None, overrides=overrides
    )
    if args.all:
        cfg.limit = None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would garble the status line
    printer = StatusPrinter(min_interval=1.0)
    summary = run_benchmark(cfg, results_dir=Path(args.out), printer=printer)
    print(summary["console"])
    print(f"\nWrote {summary['report_md']} and {summary['results_json']}")
    return 0


def _run_vision(args: argparse.Namespace) -> int:
    """A vision-language student: image questions instead of the text suite."""
    from nexus.multimodal.benchmark import run_vision_benchmark

    summary = run_vision_benchmark(
        student=args.student,
        teacher=args.teacher,
        limit=args.limit,
        data=args.image_data,
        out=Path(args.out),
        seed=args.seed or 0,
    )
    print(summary["console"])
    print(f"\nWrote {summary['report_md']} and {summary['results_json']}")
    return 0
