"""`nexus train`: phase 3, recovery fine-tuning (CE on gold answers + KD from the teacher).

The flags are generated from :class:`~nexus.training.config.TrainConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nexus.cli_flags import add_config_flags, add_set_flag
from nexus.training.config import TrainConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="phase 3: recovery fine-tuning on domain-mixed instruction data"
    )
    parser.add_argument("--config", help="YAML config file (its 'train:' section)")
    add_set_flag(parser)
    add_config_flags(parser, TrainConfig)
    parser.add_argument("--results", default="results", help="results directory (status.json lives here)")
    parser.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from nexus.cli_flags import config_overrides
    from nexus.config import load_config
    from nexus.monitor import Flags, StatusPrinter
    from nexus.monitor.lock import single_phase_run
    from nexus.training.run import run_train

    cfg = load_config(
        TrainConfig,
        args.config,
        section="train" if args.config else None,
        overrides=config_overrides(args, TrainConfig),
    )
    flags, printer = Flags(Path(args.flags)), StatusPrinter(min_interval=1.0)
    with single_phase_run(args.results, flags, printer):
        summary = run_train(cfg, results_dir=Path(args.results), flags=flags, printer=printer)
    print(json.dumps({k: summary.get(k) for k in ("status", "step", "loss", "eval", "model_dir")}, indent=2))
    return 0
