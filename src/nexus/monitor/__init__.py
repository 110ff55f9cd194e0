"""Monitoring shared by every phase: status.json, the status line, GPU temperature, pause/stop flags.

* :class:`StatusWriter` keeps ``results/status.json`` current (atomic replace on every write);
* :func:`format_status_line` renders the usage guide's line from a status mapping;
* :class:`GpuTemperature` polls the GPU temperature every 2 s on a background thread;
* :class:`KeyboardPauseCallback` is the step-boundary hook for ``transformers.Trainer`` and for
  plain loops: it updates the status, pauses while ``flags/pause.flag`` exists and stops
  cleanly on ``flags/stop.flag``.
"""

from nexus.monitor.callbacks import KeyboardPauseCallback, StepAction
from nexus.monitor.flags import Flags
from nexus.monitor.gpu import GpuTemperature, read_gpu_temperature
from nexus.monitor.status import (
    PHASE_NAMES,
    STATUSES,
    StatusPrinter,
    StatusWriter,
    ThroughputEMA,
    format_duration,
    format_eta,
    format_status_line,
    read_status,
)

__all__ = [
    "PHASE_NAMES",
    "STATUSES",
    "Flags",
    "GpuTemperature",
    "KeyboardPauseCallback",
    "StatusPrinter",
    "StatusWriter",
    "StepAction",
    "ThroughputEMA",
    "format_duration",
    "format_eta",
    "format_status_line",
    "read_gpu_temperature",
    "read_status",
]
