"""`nexus distill`: phase 2 from the command line (YAML section ``distill:``, ``--set``, flags).

The flags are generated from :class:`~nexus.distillation.config.DistillConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json
import os

from nexus.distillation.config import DistillConfig
from nexus.phase_cli import add_phase_config_flags, add_phase_dir_flags


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="phase 2: distill the teacher into a smaller student (KD + ActivationAnchoringLoss)",
        description="Distill a teacher into a student. With only --teacher, the student is the teacher "
        "depth-pruned to evenly spread layers and the data is the built-in offline corpus. Re-running on an "
        "output directory with checkpoints resumes from the newest one.",
    )
    add_phase_config_flags(p, DistillConfig, "distill")
    p.add_argument("--cache-only", action="store_true", help="build the teacher cache and stop")
    add_phase_dir_flags(p, results_help="results directory (status.json; default: results)")
    p.set_defaults(func=_distill)


def _distill(args: argparse.Namespace) -> int:
    from nexus.cli_flags import config_overrides
    from nexus.distillation.run import run_distill
    from nexus.phase_cli import load_phase_config, run_single_phase

    overrides = config_overrides(args, DistillConfig)
    if args.cache_only:
        overrides["cache_teacher"] = True
    cfg = load_phase_config(args, DistillConfig, "distill", overrides)
    summary = run_single_phase(run_distill, cfg, args.results, args.flags, cache_only=args.cache_only)
    if os.environ.get("RANK", "0") == "0":  # one summary per run, not one per process
        print(json.dumps(summary, indent=2, default=str))
    return 0
