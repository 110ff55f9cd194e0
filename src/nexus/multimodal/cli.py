"""`nexus multimodal run` (what ./run_multimodal_pipeline.sh calls) and `nexus multimodal teacher`."""

from __future__ import annotations

import argparse

from nexus.pipeline.cli import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "multimodal", help="distill a vision-language teacher into a small vision-language student"
    )
    sub = parser.add_subparsers(dest="multimodal_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="the multimodal pipeline (profile, distill, train, router, release) in resume mode",
        description="Run the multimodal pipeline. Completed phases are skipped, an interrupted phase "
        "continues from its newest checkpoint, a changed config re-runs the phases it affects.",
    )
    add_run_arguments(
        run,
        presets="multimodal/",
        teacher_help="vision-language teacher: default, an HF directory or a hub name",
    )
    run.set_defaults(func=_run)
    teacher = sub.add_parser(
        "teacher", help="build (once) the embedded default vision-language teacher and print where it is"
    )
    teacher.set_defaults(func=_teacher)


def _run(args: argparse.Namespace) -> int:
    from nexus.multimodal.pipeline import PHASES

    return run_from_args(args, PHASES, presets="multimodal/", script="./run_multimodal_pipeline.sh")


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
