"""`nexus router`: phase 4, experts from the student and a router trained with KD + beta_entropy.

The flags are generated from :class:`~nexus.router.config.RouterConfig`'s fields
(:mod:`nexus.cli_flags`: file < flag < ``--set``, as in every command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nexus.cli_flags import add_config_flags, add_set_flag
from nexus.router.config import RouterConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "router", help="phase 4: split the student into experts and train the router"
    )
    parser.add_argument("--config", help="YAML config file (its 'router:' section)")
    add_set_flag(parser)
    add_config_flags(parser, RouterConfig)
    parser.add_argument("--results", default="results", help="results directory (status.json lives here)")
    parser.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    parser.set_defaults(func=_router)


def _router(args: argparse.Namespace) -> int:
    from nexus.cli_flags import config_overrides
    from nexus.config import load_config
    from nexus.monitor import Flags, StatusPrinter
    from nexus.monitor.lock import single_phase_run
    from nexus.router.run import run_router

    cfg = load_config(
        RouterConfig,
        args.config,
        section="router" if args.config else None,
        overrides=config_overrides(args, RouterConfig),
    )
    flags, printer = Flags(Path(args.flags)), StatusPrinter(min_interval=1.0)
    with single_phase_run(args.results, flags, printer):
        summary = run_router(cfg, results_dir=Path(args.results), flags=flags, printer=printer)
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
