"""One run per results directory: a lock file holding the owner's pid.

``nexus run`` and the single-phase commands (``nexus profile``, ``distill``, ``train``,
``router``) take it, so a second run on the same ``results/`` (which would overwrite its
``status.json``, flags and phase outputs) refuses to start; a lock left by a process that no
longer exists (killed, machine rebooted) is taken over. Creation uses ``O_EXCL`` so two
starters cannot both win. Under torchrun only rank 0 takes it (the other ranks are its workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from nexus.errors import NexusError
from nexus.monitor.flags import rank_zero

LOCK_FILE = ".pipeline.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class PipelineLock:
    def __init__(self, results_dir: str | Path) -> None:
        self.path = Path(results_dir) / LOCK_FILE
        self.acquired = False

    def acquire(self) -> PipelineLock:
        if not rank_zero():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                same_host = owner.get("host") in (None, socket.gethostname())
                if owner.get("pid") and same_host and _alive(int(owner["pid"])):
                    raise NexusError(
                        f"another nexus run (pid {owner['pid']}) is using {self.path.parent}; "
                        "wait for it, stop it with `nexus stop`, or use another results directory"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
            self.acquired = True
            return self
        raise NexusError(f"could not take the pipeline lock {self.path}")

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def release(self) -> None:
        if self.acquired and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.acquired = False

    def __enter__(self) -> PipelineLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def single_phase_run(results_dir: str | Path, flags, printer):
    """What ``nexus profile|distill|train|router`` hold while they run: the results lock, then the
    terminal keys; a stale ``stop.flag`` is cleared only once the lock is ours."""
    from nexus.monitor import KeyControls

    with PipelineLock(results_dir), KeyControls(flags, printer):
        flags.clear_stale_stop(printer.message)
        yield
