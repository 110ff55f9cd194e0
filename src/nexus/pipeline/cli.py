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
    add_run_arguments(parser)
    parser.set_defaults(func=_run)


def add_run_arguments(
    parser, *, presets: str = "", teacher_help: str = "teacher spec (overrides the config)"
) -> None:
    """The options of a pipeline run (``nexus run``, ``nexus multimodal run``); presets live in
    ``configs/<presets>``."""
    parser.add_argument("--config", help=f"pipeline YAML (default: configs/{presets}default.yaml)")
    parser.add_argument("--preset", help=f"a preset from configs/{presets} (e.g. quick for a first look)")
    parser.add_argument("--teacher", help=teacher_help)
    parser.add_argument("--fresh", action="store_true", help="archive the old results/ and start over")
    parser.add_argument("--only", metavar="PHASE", help="run only this phase (name or number)")
    parser.add_argument("--from", dest="start", metavar="PHASE", help="run from this phase on")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. distill.max_steps=50",
    )


def run_from_args(
    args: argparse.Namespace, phases, *, presets: str = "", script: str = "./run_nexus_master.sh"
) -> int:
    """Run ``phases`` with the options of :func:`add_run_arguments`."""
    from nexus.config import deep_merge, parse_overrides
    from nexus.pipeline.runner import load_pipeline_config, run_pipeline

    # file < flag < --set, as in every command (nexus.cli_flags)
    overrides = deep_merge({"teacher": args.teacher} if args.teacher else {}, parse_overrides(args.set))
    config, source = load_pipeline_config(args.config, args.preset, overrides, presets=presets)
    return run_pipeline(
        config,
        source=source,
        phases=phases,
        only=args.only,
        start=args.start,
        fresh=args.fresh,
        script=script,
    )


def _run(args: argparse.Namespace) -> int:
    from nexus.pipeline.phases import PHASES

    return run_from_args(args, PHASES)
