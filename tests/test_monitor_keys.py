"""KeyControls on a real pseudo-terminal: p pauses/resumes and s stops through the flags, the
terminal is put back on every exit path, and nothing happens without a terminal."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import termios
import time

import pytest

from nexus.monitor import Flags, KeyControls
from nexus.monitor.status import StatusPrinter


@pytest.fixture
def pty_stdin():
    master, slave = os.openpty()
    stdin = os.fdopen(slave, "r", closefd=True)
    yield master, stdin
    stdin.close()
    os.close(master)


def eventually(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_keys_toggle_pause_and_stop_through_the_flags(tmp_path, pty_stdin):
    master, stdin = pty_stdin
    flags, out = Flags(tmp_path / "flags"), io.StringIO()
    before = termios.tcgetattr(stdin.fileno())
    with KeyControls(flags, StatusPrinter(out), stdin=stdin) as keys:
        assert keys.active
        lflag = termios.tcgetattr(stdin.fileno())[3]
        assert not lflag & (termios.ICANON | termios.ECHO), "keys must arrive unbuffered and unechoed"
        assert lflag & termios.ISIG, "Ctrl-C must still send SIGINT"
        os.write(master, b"p")
        assert eventually(flags.pause_requested)
        os.write(master, b"P")
        assert eventually(lambda: not flags.pause_requested())
        os.write(master, b"xs")
        assert eventually(flags.stop_requested)
    assert termios.tcgetattr(stdin.fileno()) == before
    text = out.getvalue()
    assert "keys: p pause/resume, s stop" in text and "p: resuming" in text and "s: checkpointing" in text


def test_terminal_is_restored_when_the_run_raises(tmp_path, pty_stdin):
    _, stdin = pty_stdin
    before = termios.tcgetattr(stdin.fileno())
    with pytest.raises(KeyboardInterrupt), KeyControls(Flags(tmp_path), stdin=stdin):
        assert termios.tcgetattr(stdin.fileno()) != before
        raise KeyboardInterrupt
    assert termios.tcgetattr(stdin.fileno()) == before


def test_no_terminal_no_keys(tmp_path):
    read, write = os.pipe()
    flags = Flags(tmp_path / "flags")
    try:
        with os.fdopen(os.dup(read)) as stdin, KeyControls(flags, stdin=stdin) as keys:
            os.write(write, b"ps")
            time.sleep(0.3)
            assert not keys.active
        assert not flags.pause_requested() and not flags.stop_requested()
        assert os.read(read, 2) == b"ps", "input that is not a terminal must be left alone"
    finally:
        os.close(read)
        os.close(write)
    with KeyControls(flags, stdin=io.StringIO("p")) as keys:  # no file descriptor at all
        assert not keys.active


def test_sigterm_puts_the_terminal_back_before_the_previous_handler_runs(tmp_path, pty_stdin):
    _, stdin = pty_stdin
    before = termios.tcgetattr(stdin.fileno())
    seen = []

    class Terminated(Exception):
        pass

    def previous(signum, frame):
        seen.append(termios.tcgetattr(stdin.fileno()))
        raise Terminated

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Terminated), KeyControls(Flags(tmp_path), stdin=stdin) as keys:
            assert keys.active and termios.tcgetattr(stdin.fileno()) != before
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        assert seen == [before], "the terminal must be restored before the process goes down"
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_process_killed_by_sigterm_leaves_the_terminal_as_it_found_it(tmp_path):
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    code = (
        "import sys, time; from nexus.monitor import Flags, KeyControls\n"
        f"with KeyControls(Flags({str(tmp_path)!r})) as keys:\n"
        "    print('active' if keys.active else 'inactive', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=subprocess.PIPE, text=True,
                            start_new_session=False)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "active"
        assert termios.tcgetattr(slave) != before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM, "SIGTERM must still end the process"
        assert termios.tcgetattr(slave) == before
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)
