"""``MetricsLog``: ``OUT/metrics.jsonl`` plus TensorBoard event files (rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard event files under ``OUT/tensorboard`` (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but logging must never kill a run
                log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
