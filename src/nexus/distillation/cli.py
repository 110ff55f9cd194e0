"""`nexus distill`: phase 2 from the command line (YAML section ``distill:``, ``--set``, flags).

The flags are generated from :class:`~nexus.distillation.config.DistillConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nexus.cli_flags import add_config_flags, add_set_flag
from nexus.distillation.config import DistillConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="phase 2: distill the teacher into a smaller student (KD + ActivationAnchoringLoss)",
        description="Distill a teacher into a student. With only --teacher, the student is the teacher "
        "depth-pruned to evenly spread layers and the data is the built-in offline corpus. Re-running on an "
        "output directory with checkpoints resumes from the newest one.",
    )
    p.add_argument("--config", help="YAML config file (its 'distill:' section)")
    add_set_flag(p)
    add_config_flags(p, DistillConfig)
    p.add_argument("--cache-only", action="store_true", help="build the teacher cache and stop")
    p.add_argument("--results", default="results", help="results directory (status.json; default: results)")
    p.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    p.set_defaults(func=_distill)


def _distill(args: argparse.Namespace) -> int:
    import sys

    from nexus.cli_flags import config_overrides
    from nexus.config import load_config
    from nexus.distillation.run import run_distill
    from nexus.monitor import Flags, StatusPrinter
    from nexus.monitor.lock import single_phase_run

    overrides = config_overrides(args, DistillConfig)
    if args.cache_only:
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
