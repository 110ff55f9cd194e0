"""What the single-phase commands (``nexus profile|distill|train|router``) share: their flags,
their config (file < flag < ``--set``, see :mod:`nexus.cli_flags`) and how they run one phase
(the results lock, the terminal keys, ``flags/``, the status line).

Heavy imports stay inside the functions, so ``nexus --help`` is fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus.cli_flags import add_config_flags, add_set_flag, config_overrides


def add_phase_config_flags(parser: argparse.ArgumentParser, cls: type, section: str) -> None:
    """``--config`` (the file's ``section:``), ``--set`` and one flag per field of ``cls``."""
    parser.add_argument("--config", help=f"YAML config file (its '{section}:' section)")
    add_set_flag(parser)
    add_config_flags(parser, cls)


def add_phase_dir_flags(
    parser: argparse.ArgumentParser, results_help: str = "results directory (status.json lives here)"
) -> None:
    """``--results`` and ``--flags``: where the phase writes its status and reads its pause/stop flags."""
    parser.add_argument("--results", default="results", help=results_help)
    parser.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")


def load_phase_config(
    args: argparse.Namespace, cls: type, section: str, overrides: dict[str, Any] | None = None
) -> Any:
    """The phase's config: ``args.config``'s ``section:``, under ``overrides`` (default: the
    command line's flags, then its ``--set`` values)."""
    from nexus.config import load_config

    if overrides is None:
        overrides = config_overrides(args, cls)
    return load_config(cls, args.config, section=section if args.config else None, overrides=overrides)


def run_single_phase(
    run: Callable[..., dict[str, Any]],
    config: Any,
    results_dir: str | Path,
    flags_dir: str | Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """``run(config, results_dir=, flags=, printer=, **kwargs)`` under the results lock and the
    terminal keys (:func:`nexus.monitor.lock.single_phase_run`); returns its summary."""
    from nexus.monitor import Flags, StatusPrinter
    from nexus.monitor.lock import single_phase_run

    flags, printer = Flags(Path(flags_dir)), StatusPrinter(min_interval=1.0)
    with single_phase_run(results_dir, flags, printer):
        return run(config, results_dir=Path(results_dir), flags=flags, printer=printer, **kwargs)
