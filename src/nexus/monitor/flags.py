"""Control files: ``flags/pause.flag`` pauses at the next step boundary, ``flags/stop.flag`` stops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
