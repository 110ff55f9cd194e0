"""Monitoring shared by every phase: status.json, the status line, GPU temperature, pause/stop flags.

* :class:`StatusWriter` keeps ``results/status.json`` current (atomic replace on every write);
* :func:`format_status_line` renders the usage guide's line from a status mapping;
* :class:`GpuTemperature` polls the GPU temperature every 2 s on a background thread;
* :class:`KeyboardPauseCallback` is the step-boundary hook for ``transformers.Trainer`` and for
  plain loops: it updates the status, pauses while ``flags/pause.flag`` exists and stops
  cleanly on ``flags/stop.flag``;
* :class:`KeyControls` turns ``p`` / ``s`` pressed in the run's terminal into those flags.
"""

from nexus.utils import lazy_exports

# Names resolve lazily (PEP 562): `nexus --help` must not pay for importing torch/transformers.
_LAZY = {
    "Flags": "nexus.monitor.flags",
    "GpuTemperature": "nexus.monitor.gpu",
    "KeyControls": "nexus.monitor.keys",
    "KeyboardPauseCallback": "nexus.monitor.callbacks",
    "PHASE_NAMES": "nexus.monitor.status",
    "STATUSES": "nexus.monitor.status",
    "StatusPrinter": "nexus.monitor.status",
    "StatusWriter": "nexus.monitor.status",
    "StepAction": "nexus.monitor.callbacks",
    "ThroughputEMA": "nexus.monitor.status",
    "format_duration": "nexus.monitor.status",
    "format_eta": "nexus.monitor.status",
    "format_status_line": "nexus.monitor.status",
    "read_gpu_temperature": "nexus.monitor.gpu",
    "read_status": "nexus.monitor.status",
    "warn_line": "nexus.monitor.status",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
