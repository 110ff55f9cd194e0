"""Single-key control of a run from its own terminal: ``p`` pauses/resumes, ``s`` stops.

:class:`KeyControls` wraps a whole run (``nexus run``, ``nexus distill`` ...). When stdin is a
terminal and this process is in its foreground, it switches the terminal to cbreak mode (keys
arrive one at a time, unechoed; Ctrl-C still sends SIGINT) and a daemon thread turns keys into
the control files every phase already honours, so ``nexus status`` and ``nexus resume`` agree
with the keys:

* ``p``: create ``flags/pause.flag`` (pause at the next step boundary), or remove it (resume);
* ``s``: create ``flags/stop.flag`` (checkpoint and stop at the next step boundary).

Leaving the ``with`` block -- normally, by Ctrl-C, or by an exception -- stops the thread and
restores the terminal settings it found. Without a terminal (CI, pipes, ``nohup``), in a
background job, or on a non-zero distributed rank it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import TextIO

from nexus.monitor.flags import Flags, rank_zero
from nexus.monitor.status import StatusPrinter

HELP = "keys: p pause/resume, s stop (also: nexus pause / nexus resume / nexus stop)"


def _foreground(fd: int) -> bool:
    """False when ``fd`` is our controlling terminal and another process group owns it (a background
    job): reading it would stop us with SIGTTIN."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # a terminal that is not our controlling one: no job control applies
        return True


class KeyControls:
    def __init__(
        self, flags: Flags, printer: StatusPrinter | None = None, *, stdin: TextIO | None = None
    ) -> None:
        self.flags, self.printer = flags, printer
        self.stdin = stdin if stdin is not None else sys.stdin
        self.active = False
        self._fd: int | None = None
        self._saved: list | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_term = None

    def _terminal_fd(self) -> int | None:
        if not rank_zero():
            return None
        try:
            fd = self.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # pytest's stdin, a closed stream, StringIO
            return None
        return fd if os.isatty(fd) and _foreground(fd) else None

    def __enter__(self) -> KeyControls:
        fd = self._terminal_fd()
        if fd is None:
            return self
        import termios
        import tty

        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSADRAIN)
        except termios.error:
            self._saved = None
            return self
        self._fd, self.active = fd, True
        if threading.current_thread() is threading.main_thread():
            # SIGTERM would end the process without __exit__: put the terminal back first.
            self._previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._thread = threading.Thread(target=self._listen, name="nexus-keys", daemon=True)
        self._thread.start()
        self._say(HELP)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_sigterm(self, signum, frame) -> None:
        previous = self._previous_term
        self.close()  # also puts ``previous`` back as the SIGTERM handler
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: die by SIGTERM, as before
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        """Stop listening and put the terminal back as it was (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._saved is not None and self._fd is not None:
            import termios

            # A job moved to the background gets SIGTTOU (and stops) on tcsetattr unless it is ignored.
            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTTOU, previous)
            self._saved = None
        if self._previous_term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None
        self.active = False

    def _say(self, text: str) -> None:
        if self.printer is not None:
            self.printer.message(text)

    def _listen(self) -> None:
        fd = self._fd
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:  # end of input: the terminal went away
                return
            for key in data.decode("utf-8", "ignore").lower():
                self.handle(key)

    def handle(self, key: str) -> None:
        if key == "p":
            if self.flags.resume():
                self._say("p: resuming")
            else:
                self.flags.pause()
                self._say("p: pausing at the next step boundary (press p again to resume)")
        elif key == "s":
            self.flags.stop()
            self._say("s: checkpointing and stopping at the next step boundary")
