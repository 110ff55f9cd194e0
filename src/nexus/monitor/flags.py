"""Control files: ``flags/pause.flag`` pauses at the next step boundary, ``flags/stop.flag`` stops."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def rank_zero() -> bool:
    """False on a non-zero torchrun rank: rank 0 alone owns the flags and the keyboard."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Flags:
    directory: Path = Path("flags")

    @property
    def pause_file(self) -> Path:
        return Path(self.directory) / "pause.flag"

    @property
    def stop_file(self) -> Path:
        return Path(self.directory) / "stop.flag"

    def pause_requested(self) -> bool:
        return self.pause_file.exists()

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def pause(self) -> Path:
        self.pause_file.parent.mkdir(parents=True, exist_ok=True)
        self.pause_file.touch()
        return self.pause_file

    def resume(self) -> bool:
        """Remove the pause flag; True if there was one."""
        existed = self.pause_file.exists()
        self.pause_file.unlink(missing_ok=True)
        return existed

    def stop(self) -> Path:
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        return self.stop_file

    def clear_stop(self) -> None:
        self.stop_file.unlink(missing_ok=True)

    def clear_stale_stop(self, say: Callable[[str], None] | None = None) -> bool:
        """At the start of a run (``nexus run`` and each single-phase command): remove a stop request
        left by an earlier run -- a stop belongs to the run it stopped -- and say so in one line.
        Rank 0 only. True if there was one."""
        if not rank_zero() or not self.stop_requested():
            return False
        self.clear_stop()
        if say is not None:
            say(f"removed a stale stop request ({self.stop_file}) left by an earlier run")
        return True
