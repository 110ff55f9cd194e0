"""The `nexus` console command: one subcommand per phase and per tool.

Each subcommand lives next to the code it drives, in a module exposing
``register(subparsers)``; that function adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code. A module that is not
present is simply not offered: unbuilt features are absent, not faked.
Heavy imports (torch, transformers) happen inside the handlers so ``nexus --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from nexus import __version__
from nexus.errors import NexusError

# Subcommand modules, in the order `nexus --help` lists them.
COMMAND_MODULES = (
    "nexus.pipeline.cli",  # run
    "nexus.multimodal.cli",  # multimodal run / teacher
    "nexus.profiling.cli",  # profile
    "nexus.distillation.cli",  # distill
    "nexus.training.cli",  # train
    "nexus.router.cli",  # router
    "nexus.benchmark.cli",  # benchmark
    "nexus.retention.cli",  # retention
    "nexus.knowledge.cli",  # index
    "nexus.inference.cli",  # chat
    "nexus.models.cli",  # models
    "nexus.models.export_cli",  # export
    "nexus.monitor.cli",  # status, pause, resume
)


def _load_command_modules() -> list:
    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            # Only skip the module that is absent, never hide a broken import inside it.
            if exc.name is None or not name.startswith(exc.name):
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus",
        description="Distill a large teacher LLM into a small, fast student with a retrieval memory.",
    )
    parser.add_argument("--version", action="version", version=f"nexus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_command_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not {"-v", "--verbose"} & set(argv):  # weight-loading progress bars would garble the status line
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party chatter (download bars, deprecation notes) is not ours to show by default.
    for noisy in ("transformers", "huggingface_hub", "accelerate", "sentence_transformers", "faiss", "gguf"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NexusError as exc:
        print(f"nexus: error: {exc}", file=sys.stderr)
        return NexusError.exit_code
    except KeyboardInterrupt:
        print("nexus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
