"""``KeyboardPauseCallback``: the step-boundary hook every phase calls.

It works both as a ``transformers.TrainerCallback`` (``on_train_begin`` / ``on_step_end``) and
from plain loops (``step_boundary``). At each boundary it updates ``results/status.json`` and
the status line, then honours the control flags:

* while ``flags/pause.flag`` exists: status ``Paused``, ETA frozen, the process sleeps
  (polling the flag, ~no CPU); removing the flag resumes. Every ``PAUSED_REWRITE_SECONDS`` it
  rewrites the status (elapsed time and ``updated_at`` move, active time stays), so ``nexus status``
  tells a paused live run from a dead one;
* ``flags/stop.flag`` (or :meth:`request_stop`, used by the Ctrl-C handler): the caller
  checkpoints and stops; status ``Stopped``.

Keys (``p`` pause/resume, ``s`` stop) reach it through the same flags: the commands wrap the
whole run in :class:`nexus.monitor.keys.KeyControls`, which owns the terminal.
"""

from __future__ import annotations

import enum
import threading
import time

from transformers import TrainerCallback

from nexus.monitor.flags import Flags
from nexus.monitor.status import StatusPrinter, StatusWriter

PAUSED_REWRITE_SECONDS = 2.0


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
        rewrite_interval: float = PAUSED_REWRITE_SECONDS,
        sleep=time.sleep,
    ) -> None:
        self.writer = writer
        self.flags = flags or Flags()
        self.printer = printer
        self.poll_interval = poll_interval
        self.rewrite_interval = rewrite_interval
        self._sleep = sleep
        self._stop_requested = threading.Event()

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
            waited = 0.0
            while self.flags.pause_requested() and not self.stop_requested():
                self._sleep(self.poll_interval)
                waited += self.poll_interval
                if waited >= self.rewrite_interval:  # alive and paused: elapsed moves, active does not
                    waited = 0.0
                    self.writer.write()
                    if self.printer is not None and self.printer.is_tty:  # in place; no log line per rewrite
                        self._show(force=True)
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
