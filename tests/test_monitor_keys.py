"""KeyControls on a real pseudo-terminal: p pauses/resumes and s stops through the flags, the
terminal is put back on every exit path, and nothing happens without a terminal."""

from __future__ import annotations

import io
import os
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
