"""`nexus retention RESULTS_DIR`: rebuild the retention report of a (finished or partly finished)
pipeline results folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "retention",
        help="how much of the teacher each phase's student keeps, per capability (retention report)",
        description="Score the teacher, the untrained plan student and the student after each of phases "
        "2-4 on PIQA (all rows, its tune and untuned parts), held-out GSM8K, HumanEval, the built-in "
        "suite, held-out KL / top-1 agreement / bits per byte and grounded answers; write "
        "RESULTS_DIR/retention.md, retention.json and retention.png. Every row of every set by default; "
        "results are cached in RESULTS_DIR/retention/, so a rerun scores only new models.",
    )
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="the folder `nexus run` wrote (results_dir)"
    )
    parser.add_argument(
        "--measures",
        help="comma-separated: piqa, gsm8k, humaneval, builtin-code, builtin-math, "
        "builtin-chat, heldout, grounding (default: all)",
    )
    parser.add_argument(
        "--limit", action="append", default=[], metavar="FIELD=N",
        help="rows of one measure, e.g. --limit piqa_limit=300 (repeatable; 'all' for every row)",
    )  # fmt: skip
    parser.add_argument(
        "--release-limits", action="store_true",
        help="the release's row limits (release.retention defaults) instead of every row",
    )  # fmt: skip
    parser.add_argument("--teacher", help="teacher spec (default: the one the results were made with)")
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), help="model precision (default auto)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--data-dir", help="folder with the public sets (default: ../shared/data)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw retention.png")
    parser.add_argument(
        "--allow-unsandboxed-code", action="store_true",
        help="run code tasks where the kernel gives no namespaces to confine them",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nexus.config import from_dict, parse_overrides, to_dict
    from nexus.errors import NexusError
    from nexus.retention.config import MEASURES, RetentionConfig
    from nexus.retention.run import check_results_dir, run_retention

    check_results_dir(Path(args.results_dir))  # a bad folder fails before any import of torch
    base = RetentionConfig() if args.release_limits else RetentionConfig().full()
    values = to_dict(base)
    limit_fields = set(MEASURES.values())
    for pair in args.limit:
        field, _, number = pair.partition("=")
        field = field if field.endswith("_limit") else f"{field}_limit"
        if field not in limit_fields or not (number.isdigit() or number == "all"):
            raise NexusError(
                f"--limit {pair}: expected FIELD=N (N rows or 'all') with FIELD one of "
                + ", ".join(sorted(limit_fields))
            )
        values[field] = None if number == "all" else int(number)
    flags = {
        "measures": [m.strip() for m in args.measures.split(",") if m.strip()] if args.measures else None,
        "teacher": args.teacher,
        "precision": args.precision,
        "device": args.device,
        "threads": args.threads,
        "data_dir": args.data_dir,
        "plot": False if args.no_plot else None,
        "allow_unsandboxed_code": True if args.allow_unsandboxed_code else None,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_overrides(args.set))
    cfg = from_dict(RetentionConfig, values, "nexus retention")
    report = run_retention(Path(args.results_dir), cfg, say=print)
    print(report["markdown"])
    for note in report["notes"]:
        print(note)
    print("Wrote " + ", ".join(report["paths"].values()))
    return 0
