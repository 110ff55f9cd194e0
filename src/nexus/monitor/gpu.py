"""GPU core temperature: NVML first, ``nvidia-smi`` as fallback, ``None`` without a GPU."""

from __future__ import annotations

import shutil
import subprocess
import threading

POLL_SECONDS = 2.0


def _nvml_temperature() -> int | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... all mean "no reading"
        return None


def _nvidia_smi_temperature() -> int | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=temperature.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return int(out.split()[0])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def read_gpu_temperature() -> int | None:
    """Temperature of GPU 0 in degrees Celsius, or None when there is no readable GPU."""
    temperature = _nvml_temperature()
    return temperature if temperature is not None else _nvidia_smi_temperature()


class GpuTemperature:
    """Reads the GPU temperature every ``interval`` seconds on a daemon thread.

    ``value`` is the latest reading (None without a GPU). When the first reading finds no GPU,
    polling stops: a machine does not grow one mid-run.
    """

    def __init__(self, interval: float = POLL_SECONDS, reader=read_gpu_temperature) -> None:
        self.interval = interval
        self._reader = reader
        self.value: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuTemperature:
        if self._thread is None:
            self.value = self._reader()
            if self.value is not None:
                self._thread = threading.Thread(target=self._run, name="nexus-gpu-temp", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.value = self._reader()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
            self._thread = None
