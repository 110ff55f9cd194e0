"""`nexus run`: the whole pipeline (what ./run_nexus_master.sh calls)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run phases 1-5 (profile, distill, train, router, release) in resume mode",
        description="Run the whole Nexus pipeline. Completed phases are skipped, an interrupted phase "
        "continues from its newest checkpoint, a changed config re-runs the phases it affects.",
    )
    parser.add_argument("--config", help="pipeline YAML (default: configs/default.yaml)")
    parser.add_argument("--preset", help="a preset from configs/ (e.g. quick for a first look)")
    parser.add_argument("--teacher", help="teacher spec (overrides the config)")
    parser.add_argument("--fresh", action="store_true", help="archive the old results/ and start over")
    parser.add_argument("--only", metavar="PHASE", help="run only this phase (name or number)")
    parser.add_argument("--from", dest="start", metavar="PHASE", help="run from this phase on")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. distill.max_steps=50",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nexus.config import deep_merge, parse_overrides
    from nexus.pipeline.phases import PHASES
    from nexus.pipeline.runner import load_pipeline_config, run_pipeline

    # file < flag < --set, as in every command (nexus.cli_flags)
    overrides = deep_merge({"teacher": args.teacher} if args.teacher else {}, parse_overrides(args.set))
    config, source = load_pipeline_config(args.config, args.preset, overrides)
    return run_pipeline(
        config, source=source, phases=PHASES, only=args.only, start=args.start, fresh=args.fresh
    )
