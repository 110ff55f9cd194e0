"""Device and precision choices, made in one place so every phase scales the same way."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1", ...), else CUDA when present, else CPU.

    Under a multi-process launch (``WORLD_SIZE > 1``) a bare ``cuda`` means this process's GPU,
    ``cuda:LOCAL_RANK``, which also becomes the current CUDA device (NCCL and FSDP need it).
    """
    device = (
        torch.device(requested) if requested else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX), where bf16 beats fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Map ``auto`` to ``bf16`` where supported, else ``fp32``; check an explicit ``bf16``."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision not in ("bf16", "fp32", "fp16"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, not {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str):
    """An autocast context for ``precision`` (``nullcontext`` for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, or the process RSS sampled on CPU."""

    def __init__(self, device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())
