"""`nexus train`: phase 3, recovery fine-tuning (CE on gold answers + KD from the teacher)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `nexus train` and `nexus router`."""
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--teacher", help="teacher model spec (default: default)")
    parser.add_argument("--student", help="student model spec (default: <results>/distill/model)")
    parser.add_argument("--data", nargs="+", help="data sources: files, dirs, hf:NAME, builtin")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--max-steps", type=int, help="optimizer steps")
    parser.add_argument("--results", default="results", help="results directory (status.json lives here)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1")
    parser.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field"
    )


def overrides(args: argparse.Namespace) -> dict:
    from nexus.config import parse_overrides

    values = {
        "teacher": args.teacher,
        "student": args.student,
        "data": args.data,
        "out": args.out,
        "max_steps": args.max_steps,
        "device": args.device,
    }
    return {**values, **parse_overrides(args.set)}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="phase 3: recovery fine-tuning on domain-mixed instruction data"
    )
    add_common_flags(parser)
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from nexus.config import load_config
    from nexus.monitor import Flags, StatusPrinter
    from nexus.pipeline.lock import single_phase_run
    from nexus.training.config import TrainConfig
    from nexus.training.run import run_train

    cfg = load_config(
        TrainConfig, args.config, section="train" if args.config else None, overrides=overrides(args)
    )
    flags, printer = Flags(Path(args.flags)), StatusPrinter(min_interval=1.0)
    with single_phase_run(args.results, flags, printer):
        summary = run_train(cfg, results_dir=Path(args.results), flags=flags, printer=printer)
    print(json.dumps({k: summary.get(k) for k in ("status", "step", "loss", "eval", "model_dir")}, indent=2))
    return 0
