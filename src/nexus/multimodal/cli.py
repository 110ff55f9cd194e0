"""`nexus multimodal run` (what ./run_multimodal_pipeline.sh calls) and `nexus multimodal teacher`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "multimodal", help="distill a vision-language teacher into a small vision-language student"
    )
    sub = parser.add_subparsers(dest="multimodal_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="the multimodal pipeline (profile, distill, train, release) in resume mode",
        description="Run the multimodal pipeline. Completed phases are skipped, an interrupted phase "
        "continues from its newest checkpoint, a changed config re-runs the phases it affects.",
    )
    run.add_argument("--config", help="pipeline YAML (default: configs/multimodal/default.yaml)")
    run.add_argument("--preset", help="configs/multimodal/<PRESET>.yaml (e.g. quick)")
    run.add_argument("--teacher", help="vision-language teacher: default, an HF directory or a hub name")
    run.add_argument("--fresh", action="store_true", help="archive the old results/ and start over")
    run.add_argument("--only", metavar="PHASE", help="run only this phase (name or number)")
    run.add_argument("--from", dest="start", metavar="PHASE", help="run from this phase on")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    run.set_defaults(func=_run)
    teacher = sub.add_parser(
        "teacher", help="build (once) the embedded default vision-language teacher and print where it is"
    )
    teacher.set_defaults(func=_teacher)


def _run(args: argparse.Namespace) -> int:
    from nexus.config import deep_merge, load_config, parse_overrides
    from nexus.errors import NexusError
    from nexus.multimodal.pipeline import PHASES, multimodal_preset
    from nexus.pipeline.runner import PipelineConfig, run_pipeline

    if args.config and args.preset:
        raise NexusError("give either --config or --preset, not both")
    overrides = deep_merge({"teacher": args.teacher} if args.teacher else {}, parse_overrides(args.set))
    source = args.config or str(multimodal_preset(args.preset))
    config = load_config(PipelineConfig, source, overrides=overrides)
    return run_pipeline(
        config,
        source=source,
        phases=PHASES,
        only=args.only,
        start=args.start,
        fresh=args.fresh,
        script="./run_multimodal_pipeline.sh",
    )


def _teacher(args: argparse.Namespace) -> int:
    import json

    from nexus.multimodal.default_teacher import BUILD_FILE, default_teacher_path

    path = default_teacher_path()
    record = json.loads((path / BUILD_FILE).read_text())
    held = record["heldout"]
    print(path)
    print(
        f"held-out synthetic questions ({held['n']}): exact match {100 * held['exact_match']:.1f}%, "
        f"multiple choice {100 * held['multiple_choice']:.1f}% (chance 25%); built in "
        f"{record['seconds']['total']:.0f} s"
    )
    return 0
