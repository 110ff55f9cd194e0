"""``KeyboardPauseCallback``: the step-boundary hook every phase calls.

It works both as a ``transformers.TrainerCallback`` (``on_train_begin`` / ``on_step_end``) and
from plain loops (``step_boundary``). At each boundary it updates ``results/status.json`` and
the status line, then honours the control flags:

* while ``flags/pause.flag`` exists: status ``Paused``, ETA frozen, the process sleeps
  (polling the flag, ~no CPU); removing the flag resumes;
* ``flags/stop.flag`` (or :meth:`request_stop`, used by the Ctrl-C handler): the caller
  checkpoints and stops; status ``Stopped``.

With ``listen_keys=True`` on a terminal, pressing ``p`` toggles the pause flag and ``s``
requests a stop, so a user can pause without a second shell.
"""

from __future__ import annotations

import enum
import sys
import threading
import time

from transformers import TrainerCallback

from nexus.monitor.flags import Flags
from nexus.monitor.status import StatusPrinter, StatusWriter


class StepAction(enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"


class KeyboardPauseCallback(TrainerCallback):
    def __init__(
        self,
        writer: StatusWriter,
        *,
        flags: Flags | None = None,
        printer: StatusPrinter | None = None,
        poll_interval: float = 0.5,
        listen_keys: bool = False,
        sleep=time.sleep,
    ) -> None:
        self.writer = writer
        self.flags = flags or Flags()
        self.printer = printer
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._stop_requested = threading.Event()
        self._key_thread: threading.Thread | None = None
        if listen_keys and sys.stdin.isatty():
            self._key_thread = threading.Thread(target=self._listen_keys, name="nexus-keys", daemon=True)
            self._key_thread.start()

    # -- plain-loop API --------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requested.set()

    def stop_requested(self) -> bool:
        return self._stop_requested.is_set() or self.flags.stop_requested()

    def _show(self, force: bool = False) -> None:
        if self.printer is not None:
            self.printer.show(self.writer.state, force=force)

    def step_boundary(
        self,
        step: int,
        *,
        loss: float | None = None,
        total_steps: int | None = None,
        units: float | None = None,
        **extra,
    ) -> StepAction:
        """Call after each completed step; returns STOP when the caller should checkpoint and stop."""
        self.writer.update(step, loss=loss, total_steps=total_steps, units=units, **extra)
        self._show()
        if self.stop_requested():
            self.writer.set_status("Stopped")
            self._show(force=True)
            return StepAction.STOP
        if self.flags.pause_requested():
            self.writer.set_status("Paused")
            self._show(force=True)
            while self.flags.pause_requested() and not self.stop_requested():
                self._sleep(self.poll_interval)
            if self.stop_requested():
                self.writer.set_status("Stopped")
                self._show(force=True)
                return StepAction.STOP
            self.writer.set_status("Running")
            self._show(force=True)
        return StepAction.CONTINUE

    # -- transformers.Trainer hooks --------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.update(state.global_step, total_steps=state.max_steps)
            self._show(force=True)

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        loss = next((entry["loss"] for entry in reversed(state.log_history) if "loss" in entry), None)
        if self.step_boundary(state.global_step, loss=loss, total_steps=state.max_steps) is StepAction.STOP:
            control.should_save = True
            control.should_training_stop = True
        return control

    # -- keyboard --------------------------------------------------------------------
    def _listen_keys(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        try:
            old = termios.tcgetattr(fd)
        except termios.error:
            return
        try:
            tty.setcbreak(fd)
            while not self._stop_requested.is_set():
                key = sys.stdin.read(1).lower()
                if key == "p":
                    if self.flags.pause_requested():
                        self.flags.resume()
                    else:
                        self.flags.pause()
                elif key == "s":
                    self.request_stop()
                elif key == "":
                    return
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
