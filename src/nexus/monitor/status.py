"""``results/status.json`` and the status line.

The line is the usage guide's, exactly::

    [Phase 2: Distill] ⏱️ 02:14:35 | Step: 4500 | ETA: 1h20m | GPU: 72°C

(``GPU: n/a`` without a GPU; `` | Paused`` etc. is appended when the status is not Running).
ETA comes from an exponential moving average of the recent seconds per step, not the run's
mean, so it follows throughput changes; time spent paused is excluded from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from nexus.monitor.gpu import GpuTemperature
from nexus.utils import atomic_write_json

PHASE_NAMES = {1: "Profile", 2: "Distill", 3: "Train", 4: "Router", 5: "Release"}
STATUSES = ("Running", "Paused", "Stopped", "Failed", "Completed")
STATUS_FILE = "status.json"
# What a phase's own writer reports that an enclosing writer carries over (StatusWriter.carry_over).
_PROGRESS = ("step", "total_steps", "loss", "throughput", "throughput_unit")
# Set by the master pipeline (epoch seconds) so every phase's line shows the total elapsed time.
PIPELINE_START_ENV = "NEXUS_PIPELINE_START"


def format_duration(seconds: float) -> str:
    """``HH:MM:SS`` (hours may exceed 99)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_eta(seconds: float | None) -> str:
    """``1h20m``, ``12m05s``, ``42s``; ``--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_status_line(status: dict[str, Any]) -> str:
    phase = status.get("phase")
    name = status.get("phase_name") or PHASE_NAMES.get(phase, "?")
    step = status.get("step")
    temp = status.get("gpu_temp_c")
    elapsed = status.get("pipeline_elapsed_seconds") or status.get("elapsed_seconds") or 0
    line = (
        f"[Phase {phase}: {name}] ⏱️ {format_duration(elapsed)} | "
        f"Step: {step if step is not None else '-'} | ETA: {format_eta(status.get('eta_seconds'))} | "
        f"GPU: {f'{temp}°C' if temp is not None else 'n/a'}"
    )
    state = status.get("status")
    if state and state != "Running":
        line += f" | {state}"
    return line


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status mapping, or None if there is no status file yet."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


class ThroughputEMA:
    """Exponential moving average of seconds per step and units per second.

    ``alpha`` is the weight of the newest observation; 0.1 averages over roughly the last
    ten updates, enough to smooth noise and still follow a real change within a few steps.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.seconds_per_step: float | None = None
        self.units_per_second: float | None = None

    def update(self, steps: int, seconds: float, units: float | None = None) -> None:
        if steps <= 0 or seconds <= 0:
            return
        sps = seconds / steps
        ups = (units if units is not None else steps) / seconds
        if self.seconds_per_step is None:
            self.seconds_per_step, self.units_per_second = sps, ups
        else:
            self.seconds_per_step += self.alpha * (sps - self.seconds_per_step)
            self.units_per_second += self.alpha * (ups - self.units_per_second)

    def eta(self, remaining_steps: int | None) -> float | None:
        if remaining_steps is None or self.seconds_per_step is None:
            return None
        return max(0, remaining_steps) * self.seconds_per_step


class StatusWriter:
    """Owns ``results/status.json`` for one phase of one process (rank 0 only, in distributed runs).

    Every write replaces the file atomically (temp + fsync + ``os.replace``), so a concurrent
    reader never sees a partial file.
    """

    def __init__(
        self,
        results_dir: str | Path = "results",
        *,
        phase: int,
        phase_name: str | None = None,
        total_steps: int | None = None,
        throughput_unit: str = "steps/s",
        gpu: GpuTemperature | None = None,
        enabled: bool = True,
        clock=time.monotonic,
    ) -> None:
        self.path = Path(results_dir) / STATUS_FILE
        self.enabled = enabled
        self.gpu = gpu
        self._clock = clock
        self._started = clock()
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._last_step: int | None = None
        self._last_time: float | None = None
        self.ema = ThroughputEMA()
        self.state: dict[str, Any] = {
            "phase": phase,
            "phase_name": phase_name or PHASE_NAMES.get(phase, f"Phase {phase}"),
            "status": "Running",
            "step": 0,
            "total_steps": total_steps,
            "elapsed_seconds": 0.0,
            "active_seconds": 0.0,
            "eta_seconds": None,
            "throughput": None,
            "throughput_unit": throughput_unit,
            "loss": None,
            "gpu_temp_c": None,
            "pid": os.getpid(),
            "started_at": _utc_now(),
            "updated_at": _utc_now(),
            "error": None,
        }

    # -- time accounting -------------------------------------------------------------
    def _active_seconds(self, now: float) -> float:
        paused = self._paused_total + (now - self._paused_since if self._paused_since is not None else 0.0)
        return now - self._started - paused

    def _refresh(self) -> None:
        now = self._clock()
        self.state["elapsed_seconds"] = round(now - self._started, 3)
        self.state["active_seconds"] = round(self._active_seconds(now), 3)
        self.state["gpu_temp_c"] = self.gpu.value if self.gpu is not None else None
        self.state["updated_at"] = _utc_now()
        pipeline_start = os.environ.get(PIPELINE_START_ENV)
        if pipeline_start:
            self.state["pipeline_elapsed_seconds"] = round(time.time() - float(pipeline_start), 3)

    # -- public API ------------------------------------------------------------------
    def update(
        self,
        step: int,
        *,
        loss: float | None = None,
        total_steps: int | None = None,
        units: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record that ``step`` steps are done (``units`` throughput units since the last update)."""
        now = self._clock()
        if total_steps is not None:
            self.state["total_steps"] = total_steps
        active = self._active_seconds(now)
        if self._last_step is not None and step > self._last_step:
            self.ema.update(step - self._last_step, active - self._last_time, units)
        self._last_step, self._last_time = step, active
        total = self.state["total_steps"]
        self.state["step"] = step
        eta = self.ema.eta(None if total is None else total - step)
        self.state["eta_seconds"] = None if eta is None else round(eta, 1)
        self.state["throughput"] = (
            None if self.ema.units_per_second is None else round(self.ema.units_per_second, 3)
        )
        if loss is not None:
            self.state["loss"] = float(loss)
        self.state.update(extra)
        return self.write()

    def set_status(self, status: str, *, error: str | None = None) -> dict[str, Any]:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = self._clock()
        if status == "Paused" and self._paused_since is None:
            self._paused_since = now
        elif status != "Paused" and self._paused_since is not None:
            self._paused_total += now - self._paused_since
            self._paused_since = None
        self.state["status"] = status
        if status == "Completed":
            self.state["eta_seconds"] = 0.0
        if error is not None:
            self.state["error"] = error
        return self.write()

    def carry_over(self, status: dict[str, Any] | None) -> None:
        """Take over from the writer a phase ran inside this writer's span (same phase, this
        process): its progress and the time it spent paused, so this writer's elapsed time stays the
        whole span and its active time still leaves the pause out. Call once, before the last write."""
        if not status or (status.get("phase"), status.get("pid")) != (self.state["phase"], self.state["pid"]):
            return
        self.state.update({k: status[k] for k in _PROGRESS if k in status})
        paused = (status.get("elapsed_seconds") or 0.0) - (status.get("active_seconds") or 0.0)
        self._paused_total += max(0.0, paused)

    def write(self) -> dict[str, Any]:
        self._refresh()
        if self.enabled:
            atomic_write_json(self.path, self.state)
        return self.state

    def line(self) -> str:
        return format_status_line(self.state)


class StatusPrinter:
    """Prints the status line: refreshed in place on a TTY, one line per update otherwise.

    ``min_interval`` throttles updates (seconds); a change of status is always printed.
    """

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.0, clock=time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self._clock = clock
        self._last_print = -math.inf
        self._last_status: str | None = None
        self._open_line = False

    def show(self, status: dict[str, Any], *, force: bool = False) -> None:
        now = self._clock()
        changed = status.get("status") != self._last_status
        if not (force or changed or now - self._last_print >= self.min_interval):
            return
        line = format_status_line(status)
        if self.is_tty:
            self.stream.write(f"\r\x1b[2K{line}")
            self._open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_print, self._last_status = now, status.get("status")

    def message(self, text: str) -> None:
        """Print a normal line without garbling the in-place status line."""
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def warn_line(
    printer: StatusPrinter | None, text: str, logger: logging.Logger, prefix: str = "warning: "
) -> None:
    """One line on the dashboard when there is one, else on ``logger`` (not both: the pipeline's
    log handler writes to the same terminal)."""
    if printer is not None:
        printer.message(prefix + text)
    else:
        logger.warning(text)
