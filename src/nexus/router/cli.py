"""`nexus router`: phase 4, experts from the student and a router trained with KD + beta_entropy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    from nexus.training.cli import add_common_flags

    parser = subparsers.add_parser(
        "router", help="phase 4: split the student into experts and train the router"
    )
    add_common_flags(parser)
    parser.add_argument("--experts", type=int, help="experts per layer (default 3: code, math, chat)")
    parser.add_argument("--top-k", type=int, help="experts per token (default 1)")
    parser.add_argument(
        "--mode", choices=("split", "copy"), help="split the MLP (default) or copy it (upcycling)"
    )
    parser.add_argument("--beta-entropy", type=float, help="router entropy reward coefficient")
    parser.add_argument("--lb-weight", type=float, help="load-balancing loss coefficient")
    parser.set_defaults(func=_router)


def _router(args: argparse.Namespace) -> int:
    from nexus.config import load_config
    from nexus.monitor import Flags, StatusPrinter
    from nexus.pipeline.lock import single_phase_run
    from nexus.router.config import RouterConfig
    from nexus.router.run import run_router
    from nexus.training.cli import overrides

    values = overrides(args)
    values.update(
        {
            "num_experts": args.experts,
            "top_k": args.top_k,
            "mode": args.mode,
            "beta_entropy": args.beta_entropy,
            "lb_weight": args.lb_weight,
        }
    )
    cfg = load_config(RouterConfig, args.config, section="router" if args.config else None, overrides=values)
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
