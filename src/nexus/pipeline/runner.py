"""The master pipeline: phases 1-5 in order, resumable, one dashboard, one lock.

Resume mode is the default. Each phase writes its outputs under ``results/<phase>/`` and, last,
a completion marker ``results/<phase>/COMPLETE.json`` holding the hash of the config that
produced it. On the next run:

* a phase whose marker matches the current config is skipped (its summary is shown again);
* a phase whose config changed is re-run, and so is every later phase (the old output is
  moved aside, never deleted), and the run says so;
* an interrupted phase (no marker) is started again and continues from its newest checkpoint.

``--fresh`` moves the whole ``results/`` aside (``results.archive-<time>/``) and starts over.
First Ctrl-C (or ``flags/stop.flag``) checkpoints and stops cleanly at the next step boundary
with status ``Stopped``; a second Ctrl-C aborts at once. In a terminal, ``p`` pauses/resumes and
``s`` stops (:class:`~nexus.monitor.keys.KeyControls`, through the same flags).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nexus.config import config_hash, from_dict, load_config, save_resolved, to_dict
from nexus.errors import NexusError
from nexus.monitor import (
    Flags,
    GpuTemperature,
    KeyControls,
    StatusPrinter,
    StatusWriter,
    format_duration,
    read_status,
)
from nexus.monitor.lock import PipelineLock
from nexus.monitor.markers import MARKER, archive, read_marker
from nexus.monitor.status import PIPELINE_START_ENV
from nexus.utils import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """The whole pipeline: shared settings plus one section per phase (validated by that phase's
    own config class before anything runs)."""

    teacher: str = field(default="default", metadata={"help": "teacher spec: default, a GGUF, an HF dir"})
    seed: int = field(default=0, metadata={"help": "seed for every phase"})
    results_dir: str = field(default="results", metadata={"help": "where phases write their outputs"})
    release_dir: str = field(default="nexus-release-v1", metadata={"help": "the release directory"})
    flags_dir: str = field(default="flags", metadata={"help": "pause.flag / stop.flag directory"})
    profile: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)
    release: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineContext:
    config: PipelineConfig
    results_dir: Path
    flags: Flags
    printer: StatusPrinter
    gpu: GpuTemperature
    source: str  # where the config came from, for messages and the manifest
    script: str = "./run_nexus_master.sh"  # what the user runs again to resume, for messages


@dataclass
class Phase:
    number: int
    key: str
    name: str
    build_config: Callable[[PipelineContext], Any]  # -> the phase's typed config, None when disabled
    run: Callable[[Any, PipelineContext], dict[str, Any]]  # -> summary
    summary_line: Callable[[dict[str, Any]], str]

    def output_dir(self, ctx: PipelineContext) -> Path:
        return ctx.results_dir / self.key


def find_preset(name: str) -> Path:
    """``configs/<name>.yaml`` next to the working directory, else in the Nexus source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        path = root / "configs" / f"{name}.yaml"
        if path.is_file():
            return path
    raise NexusError(f"no preset named '{name}' (looked for configs/{name}.yaml)")


def load_pipeline_config(
    path: str | Path | None, preset: str | None, overrides: dict[str, Any], *, presets: str = ""
) -> tuple[PipelineConfig, str]:
    """The config of ``path``, else of the preset ``configs/<presets><preset or default>.yaml``
    (``presets``: e.g. ``multimodal/`` for the multimodal pipeline's), with ``overrides``."""
    if path and preset:
        raise NexusError("give either --config or --preset, not both")
    source = Path(path) if path else find_preset(f"{presets}{preset or 'default'}")
    return load_config(PipelineConfig, source, overrides=overrides), str(source)


class _InterruptHandler:
    """First Ctrl-C: request a clean stop (checkpoint at the next step boundary); second: abort."""

    def __init__(self, flags: Flags, printer: StatusPrinter) -> None:
        self.flags, self.printer, self.count = flags, printer, 0
        self.previous = None

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        if self.count == 1:
            self.flags.stop()
            self.printer.message(
                "Ctrl-C: stopping cleanly at the next step boundary (press Ctrl-C again to abort)"
            )
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def _select(phases: list[Phase], only: str | None, start: str | None) -> list[Phase]:
    def find(label: str) -> Phase:
        for phase in phases:
            if label.lower() in (phase.key, phase.name.lower(), str(phase.number)):
                return phase
        raise NexusError(
            f"unknown phase '{label}' (phases: {', '.join(p.key for p in phases)} or 1-{len(phases)})"
        )

    if only and start:
        raise NexusError("give either --only or --from, not both")
    if only:
        return [find(only)]
    if start:
        first = find(start)
        return [p for p in phases if p.number >= first.number]
    return phases


def run_pipeline(
    config: PipelineConfig,
    *,
    source: str,
    phases: list[Phase],
    only: str | None = None,
    start: str | None = None,
    fresh: bool = False,
    stream=None,
    script: str = "./run_nexus_master.sh",
) -> int:
    results = Path(config.results_dir)
    printer = StatusPrinter(
        stream or sys.stderr, min_interval=0.0 if (stream or sys.stderr).isatty() else 10.0
    )
    if fresh:
        moved = archive(results)
        if moved:
            printer.message(f"--fresh: archived the previous results to {moved}")
    flags = Flags(Path(config.flags_dir))
    selected = _select(phases, only, start)
    with PipelineLock(results):
        flags.clear_stale_stop(printer.message)
        os.environ[PIPELINE_START_ENV] = str(time.time())
        gpu = GpuTemperature().start()
        ctx = PipelineContext(config, results, flags, printer, gpu, source, script)
        # Validate every selected phase's config before spending hours on the first one.
        phase_configs = {phase.key: phase.build_config(ctx) for phase in selected}
        for phase in selected:
            if phase_configs[phase.key] is None:
                printer.message(f"[Phase {phase.number}: {phase.name}] disabled in {source}")
        selected = [phase for phase in selected if phase_configs[phase.key] is not None]
        save_resolved(config, results, "pipeline_config.yaml")
        started = time.monotonic()
        rerun_rest = False
        try:
            with _InterruptHandler(flags, printer) as interrupts, KeyControls(flags, printer):
                for phase in selected:
                    phase_config = phase_configs[phase.key]
                    upstream = _upstream_hashes(phases, phase, ctx)
                    digest = config_hash(
                        {"phase": _portable(to_dict(phase_config), results), "upstream": upstream}
                    )
                    # Markers written before paths were hashed relative to results/ still count.
                    legacy = config_hash({"phase": to_dict(phase_config), "upstream": upstream})
                    out = phase.output_dir(ctx)
                    marker = read_marker(out)
                    if marker and marker.get("config_hash") in (digest, legacy) and not rerun_rest:
                        printer.message(
                            f"[Phase {phase.number}: {phase.name}] complete, skipped (resume mode) | "
                            f"{phase.summary_line(marker.get('summary', {}))}"
                        )
                        continue
                    if marker and marker.get("config_hash") not in (digest, legacy):
                        moved = archive(out)
                        printer.message(
                            f"[Phase {phase.number}: {phase.name}] config changed since it ran: re-running it "
                            f"and every later phase (old output moved to {moved})"
                        )
                    rerun_rest = True
                    code = _run_phase(phase, phase_config, digest, ctx)
                    if code != 0:
                        return code
                    if interrupts.count:
                        return 130
        except KeyboardInterrupt:
            printer.finish()
            _mark(results, "Stopped", "aborted by a second Ctrl-C")
            log.error("nexus: aborted; run %s again to resume", script)
            return 130
        finally:
            gpu.stop()
            printer.finish()
            os.environ.pop(PIPELINE_START_ENV, None)
        printer.message(f"Pipeline complete in {format_duration(time.monotonic() - started)}.")
        final = read_marker(ctx.results_dir / selected[-1].key)
        if final and final.get("summary", {}).get("report"):
            printer.message(final["summary"]["report"])
    return 0


def _portable(value: Any, results: Path) -> Any:
    """``value`` with every path inside ``results`` written relative to it (``<results>/...``).

    Phases hand each other files by path (phase 2's ``plan`` is ``<results>/profile/...``), so a
    hash of the raw config would change when the results folder is moved, copied or named by
    another (absolute vs relative) path, and resume would re-run finished phases for nothing.
    """
    if isinstance(value, dict):
        return {key: _portable(item, results) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(item, results) for item in value]
    if isinstance(value, str) and value:
        for root in {str(results), str(results.resolve())}:
            if value == root or value.startswith(root + os.sep):
                return "<results>" + value[len(root) :]
    return value


def _upstream_hashes(phases: list[Phase], phase: Phase, ctx: PipelineContext) -> list[str | None]:
    """Hashes of earlier phases' markers: a re-run upstream invalidates everything downstream."""
    return [
        (read_marker(p.output_dir(ctx)) or {}).get("config_hash") for p in phases if p.number < phase.number
    ]


def _mark(results: Path, status: str, error: str | None = None) -> None:
    state = read_status(results / "status.json")
    if state and state.get("status") == "Running":
        state["status"], state["error"] = status, error
        atomic_write_json(results / "status.json", state)


def _run_phase(phase: Phase, phase_config: Any, digest: str, ctx: PipelineContext) -> int:
    out = phase.output_dir(ctx)
    out.mkdir(parents=True, exist_ok=True)
    ctx.printer.message(f"[Phase {phase.number}: {phase.name}] starting")
    writer = StatusWriter(ctx.results_dir, phase=phase.number, gpu=ctx.gpu)  # spans the whole phase
    writer.write()
    t0 = time.monotonic()
    try:
        summary = phase.run(phase_config, ctx)
    except Exception as exc:
        writer.carry_over(read_status(ctx.results_dir / "status.json"))  # the step it failed at
        writer.set_status(
            "Failed", error=str(exc) if isinstance(exc, NexusError) else f"{type(exc).__name__}: {exc}"
        )
        ctx.printer.finish()
        if isinstance(exc, NexusError):
            raise
        log.error("%s", traceback.format_exc())
        raise NexusError(
            f"phase {phase.number} ({phase.name}) failed: {type(exc).__name__}: {exc}. Earlier phases are kept; "
            "fix the cause and run again to resume here"
        ) from None
    seconds = time.monotonic() - t0
    status = read_status(ctx.results_dir / "status.json") or {}
    if ctx.flags.stop_requested() or status.get("status") == "Stopped" or summary.get("stopped"):
        ctx.printer.message(
            f"[Phase {phase.number}: {phase.name}] stopped after {format_duration(seconds)}; "
            f"run {ctx.script} again to resume from the newest checkpoint"
        )
        ctx.flags.clear_stop()
        return 130
    atomic_write_json(
        out / MARKER,
        {
            "phase": phase.number,
            "name": phase.name,
            "config_hash": digest,
            "seconds": round(seconds, 1),
            "finished_at": datetime.now().isoformat(timespec="seconds"),
            "summary": summary,
            "line": phase.summary_line(summary),  # the release's manifest quotes it
        },
    )
    writer.carry_over(status)  # elapsed since the phase started, active less the phase's pauses
    writer.set_status("Completed")
    ctx.printer.message(
        f"[Phase {phase.number}: {phase.name}] done in {format_duration(seconds)} | {phase.summary_line(summary)}"
    )
    return 0


def phase_config_from_section(
    cls: type, section: dict[str, Any], injected: dict[str, Any], source: str, key: str
):
    """A phase's typed config from its YAML section, with pipeline-level values filled in
    where the section does not set them."""
    return from_dict(cls, {**injected, **section}, f"{source} (section '{key}')")
