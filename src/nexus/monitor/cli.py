"""`nexus status [--watch]`, `nexus pause`, `nexus resume`, `nexus stop`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    status = subparsers.add_parser("status", help="show the pipeline's status line from results/status.json")
    status.add_argument("--results", default="results", help="results directory (default: results)")
    status.add_argument("--watch", action="store_true", help="keep refreshing until interrupted")
    status.add_argument("--interval", type=float, default=2.0, help="refresh period for --watch, seconds")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.set_defaults(func=_status)
    for name, text in (
        ("pause", "pause at the next step boundary (creates flags/pause.flag)"),
        ("resume", "resume a paused run (removes flags/pause.flag)"),
        ("stop", "checkpoint and stop at the next step boundary (creates flags/stop.flag)"),
    ):
        parser = subparsers.add_parser(name, help=text)
        parser.add_argument("--flags", default="flags", help="flags directory (default: flags)")
        parser.set_defaults(func=_flag_command, flag_action=name)


def _status(args: argparse.Namespace) -> int:
    from nexus.monitor.status import STATUS_FILE, StatusPrinter, read_status

    path = Path(args.results) / STATUS_FILE
    printer = StatusPrinter(sys.stdout)
    while True:
        status = read_status(path)
        if status is None:
            print(f"no status yet: {path} does not exist (start a run with ./run_nexus_master.sh)")
            return 1
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            printer.show(status, force=True)
        if not args.watch:
            printer.finish()
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            printer.finish()
            return 0


def _flag_command(args: argparse.Namespace) -> int:
    from nexus.monitor.flags import Flags

    flags = Flags(Path(args.flags))
    if args.flag_action == "pause":
        print(f"pause requested: {flags.pause()} (run `nexus resume` to continue)")
    elif args.flag_action == "resume":
        print("resumed" if flags.resume() else "not paused (no pause flag)")
    else:
        print(f"stop requested: {flags.stop()}")
    return 0
