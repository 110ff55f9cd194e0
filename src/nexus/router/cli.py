"""`nexus router`: phase 4, experts from the student and a router trained with KD + beta_entropy.

The flags are generated from :class:`~nexus.router.config.RouterConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json

from nexus.phase_cli import add_phase_config_flags, add_phase_dir_flags
from nexus.router.config import RouterConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "router", help="phase 4: split the student into experts and train the router"
    )
    add_phase_config_flags(parser, RouterConfig, "router")
    add_phase_dir_flags(parser)
    parser.set_defaults(func=_router)


def _router(args: argparse.Namespace) -> int:
    from nexus.phase_cli import load_phase_config, run_single_phase
    from nexus.router.run import run_router

    cfg = load_phase_config(args, RouterConfig, "router")
    summary = run_single_phase(run_router, cfg, args.results, args.flags)
    keys = (
        "status",
        "step",
        "loss",
        "eval",
        "router_entropy_before",
        "router_entropy_after",
        "collapse_warnings",
        "model_dir",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0
