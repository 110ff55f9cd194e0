"""`nexus train`: phase 3, recovery fine-tuning (CE on gold answers + KD from the teacher).

The flags are generated from :class:`~nexus.training.config.TrainConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json

from nexus.phase_cli import add_phase_config_flags, add_phase_dir_flags
from nexus.training.config import TrainConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="phase 3: recovery fine-tuning on domain-mixed instruction data"
    )
    add_phase_config_flags(parser, TrainConfig, "train")
    add_phase_dir_flags(parser)
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from nexus.phase_cli import load_phase_config, run_single_phase
    from nexus.training.run import run_train

    cfg = load_phase_config(args, TrainConfig, "train")
    summary = run_single_phase(run_train, cfg, args.results, args.flags)
    print(json.dumps({k: summary.get(k) for k in ("status", "step", "loss", "eval", "model_dir")}, indent=2))
    return 0
