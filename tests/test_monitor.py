"""Monitor core: atomic status.json, the guide's status line, ETA from recent throughput, flags."""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import re
import threading
import time
from pathlib import Path

import pytest

from nexus.monitor import (
    Flags,
    GpuTemperature,
    KeyboardPauseCallback,
    StatusWriter,
    StepAction,
    format_eta,
    format_status_line,
    read_status,
)
from nexus.monitor.status import StatusPrinter

GUIDE_LINE = re.compile(
    r"^\[Phase \d: \w+\] ⏱️ \d\d:\d\d:\d\d \| Step: \d+ \| ETA: (\d+h\d\dm|\d+m\d\ds|\d+s|--) \| GPU: (\d+°C|n/a)$"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_status_line_matches_guide_example():
    status = {
        "phase": 2,
        "phase_name": "Distill",
        "elapsed_seconds": 2 * 3600 + 14 * 60 + 35,
        "step": 4500,
        "eta_seconds": 80 * 60,
        "gpu_temp_c": 72,
        "status": "Running",
    }
    assert format_status_line(status) == "[Phase 2: Distill] ⏱️ 02:14:35 | Step: 4500 | ETA: 1h20m | GPU: 72°C"
    status.update(gpu_temp_c=None, status="Paused", eta_seconds=None)
    assert (
        format_status_line(status)
        == "[Phase 2: Distill] ⏱️ 02:14:35 | Step: 4500 | ETA: -- | GPU: n/a | Paused"
    )


def test_eta_format():
    assert format_eta(42) == "42s"
    assert format_eta(125) == "2m05s"
    assert format_eta(3600 * 3 + 60 * 7) == "3h07m"
    assert format_eta(None) == "--"


def test_writer_keys_and_line(tmp_path):
    clock = FakeClock()
    writer = StatusWriter(tmp_path, phase=1, total_steps=10, clock=clock)
    clock.now += 5
    writer.update(1, loss=2.5)
    status = read_status(tmp_path / "status.json")
    for key in (
        "phase",
        "phase_name",
        "status",
        "step",
        "total_steps",
        "elapsed_seconds",
        "eta_seconds",
        "throughput",
        "throughput_unit",
        "loss",
        "gpu_temp_c",
        "pid",
        "updated_at",
    ):
        assert key in status
    assert status["phase_name"] == "Profile" and status["gpu_temp_c"] is None
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", status["updated_at"])
    assert GUIDE_LINE.match(writer.line())


def test_eta_follows_recent_throughput(tmp_path):
    clock = FakeClock()
    writer = StatusWriter(tmp_path, phase=2, total_steps=1000, clock=clock, enabled=False)
    writer.update(0)
    for step in range(1, 101):  # 1 s per step for a long time
        clock.now += 1.0
        writer.update(step)
    assert abs(writer.state["eta_seconds"] - 900) < 1
    for step in range(101, 131):  # then 4x faster
        clock.now += 0.25
        writer.update(step)
    # an average over the whole run would still say ~0.77 s/step (ETA ~670 s); the EMA has moved on
    assert writer.state["eta_seconds"] < 0.35 * 870


def test_eta_excludes_paused_time(tmp_path):
    clock = FakeClock()
    writer = StatusWriter(tmp_path, phase=2, total_steps=100, clock=clock, enabled=False)
    writer.update(0)
    clock.now += 1
    writer.update(1)
    writer.set_status("Paused")
    clock.now += 500
    writer.set_status("Running")
    clock.now += 1
    writer.update(2)
    assert abs(writer.state["eta_seconds"] - 98) < 1e-6
    assert writer.state["elapsed_seconds"] == 502


def _hammer_writer(path: str, n: int) -> None:
    writer = StatusWriter(path, phase=2, total_steps=n)
    for step in range(n):
        writer.update(step, loss=float(step), payload="x" * (step % 300))


def test_status_json_is_always_valid_under_concurrent_reader(tmp_path):
    n = 3000
    proc = mp.get_context("spawn").Process(target=_hammer_writer, args=(str(tmp_path), n))
    proc.start()
    reads, path = 0, tmp_path / "status.json"
    while proc.is_alive() or reads == 0:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        json.loads(text)  # raises on a torn file
        reads += 1
    proc.join()
    assert proc.exitcode == 0
    assert json.loads(path.read_text())["step"] == n - 1
    assert reads > 100


def test_pause_flag_pauses_and_resume_continues(tmp_path):
    flags = Flags(tmp_path / "flags")
    writer = StatusWriter(tmp_path, phase=2, total_steps=10)
    callback = KeyboardPauseCallback(writer, flags=flags, poll_interval=0.01)
    assert callback.step_boundary(1) is StepAction.CONTINUE
    flags.pause()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("action", callback.step_boundary(2)))
    worker.start()
    deadline = time.time() + 5
    while read_status(tmp_path / "status.json")["status"] != "Paused":
        assert time.time() < deadline, "never paused"
        time.sleep(0.01)
    time.sleep(0.1)
    assert worker.is_alive(), "must stay paused while the flag exists"
    flags.resume()
    worker.join(timeout=5)
    assert result["action"] is StepAction.CONTINUE
    assert read_status(tmp_path / "status.json")["status"] == "Running"


def test_paused_run_rewrites_status_with_elapsed_moving_and_active_frozen(tmp_path):
    """`nexus status` must tell a paused live run (its clock moves) from a dead one (frozen)."""
    clock, flags = FakeClock(), Flags(tmp_path / "flags")
    writer = StatusWriter(tmp_path, phase=2, total_steps=10, clock=clock)
    seen, naps = [], []

    def sleep(seconds):  # a 10 s pause, polled every 0.5 s
        naps.append(seconds)
        clock.now += seconds
        seen.append(read_status(tmp_path / "status.json"))
        if clock.now >= 1013.0:
            flags.resume()

    callback = KeyboardPauseCallback(writer, flags=flags, sleep=sleep)
    clock.now += 3
    assert callback.step_boundary(1) is StepAction.CONTINUE
    flags.pause()
    assert callback.step_boundary(2) is StepAction.CONTINUE
    assert set(naps) == {0.5} and len(naps) == 20, "sleep between flag polls, no spinning"
    assert {s["status"] for s in seen} == {"Paused"}
    assert sorted({s["elapsed_seconds"] for s in seen}) == [3, 5, 7, 9, 11], "rewritten every 2 s"
    assert {s["active_seconds"] for s in seen} == {3}
    after = read_status(tmp_path / "status.json")
    assert after["status"] == "Running" and after["elapsed_seconds"] == 13 and after["active_seconds"] == 3


def test_stop_flag_stops_even_while_paused(tmp_path):
    flags = Flags(tmp_path / "flags")
    writer = StatusWriter(tmp_path, phase=3)
    callback = KeyboardPauseCallback(writer, flags=flags, poll_interval=0.01)
    flags.pause()
    threading.Timer(0.1, flags.stop).start()
    assert callback.step_boundary(1) is StepAction.STOP
    assert read_status(tmp_path / "status.json")["status"] == "Stopped"


def test_trainer_callback_sets_control(tmp_path):
    from transformers import TrainerControl, TrainerState

    flags = Flags(tmp_path / "flags")
    callback = KeyboardPauseCallback(StatusWriter(tmp_path, phase=2), flags=flags)
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.max_steps = 3, 10
    state.log_history = [{"loss": 1.5, "step": 3}]
    callback.on_step_end(None, state, control)
    assert not control.should_training_stop
    assert read_status(tmp_path / "status.json")["loss"] == 1.5
    flags.stop()
    callback.on_step_end(None, state, control)
    assert control.should_training_stop and control.should_save


def test_printer_in_place_on_tty_and_lines_otherwise(tmp_path):
    class Stream:
        def __init__(self, tty):
            self.text, self.tty = "", tty

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return self.tty

    status = {
        "phase": 4,
        "phase_name": "Router",
        "elapsed_seconds": 1,
        "step": 1,
        "eta_seconds": 5,
        "gpu_temp_c": None,
        "status": "Running",
    }
    tty, pipe = Stream(True), Stream(False)
    for printer in (StatusPrinter(tty), StatusPrinter(pipe)):
        printer.show(status)
        printer.show({**status, "step": 2})
    assert tty.text.count("\r") == 2 and "\n" not in tty.text
    assert pipe.text.count("\n") == 2 and "\r" not in pipe.text


def test_gpu_temperature_poller_and_fallback():
    readings = iter([60, 61, 62, 63, 64, 65])
    poller = GpuTemperature(interval=0.01, reader=lambda: next(readings, 65)).start()
    time.sleep(0.1)
    poller.stop()
    assert poller.value is not None and poller.value > 60
    assert GpuTemperature(reader=lambda: None).start().value is None


def test_cli_pause_resume_status(tmp_path, monkeypatch, capsys):
    from nexus.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pause"]) == 0 and Path("flags/pause.flag").exists()
    assert main(["resume"]) == 0 and not Path("flags/pause.flag").exists()
    assert main(["status"]) == 1
    StatusWriter("results", phase=2, total_steps=5).update(3)
    capsys.readouterr()
    assert main(["status"]) == 0
    assert GUIDE_LINE.match(capsys.readouterr().out.strip())


@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        ("distill", "nexus.distillation.run", "run_distill"),
        ("train", "nexus.training.run", "run_train"),
        ("router", "nexus.router.run", "run_router"),
        ("profile", "nexus.profiling.phase", "run_profile"),
    ],
)
def test_single_phase_command_clears_a_stale_stop_flag_like_nexus_run(
    command, module, function, tmp_path, monkeypatch, capsys
):
    """After `nexus stop`, the next single-phase run must not stop after its first step."""
    from nexus.cli import main

    monkeypatch.chdir(tmp_path)
    seen = {}

    def phase(config, *, flags, **kwargs):
        seen["stop requested at start"] = flags.stop_requested()
        profile_summary = {"profile": "p.json", "csv": "p.csv", "heatmap": "p.png", "wall_seconds": 0.0}
        return {"status": "Completed", **profile_summary, "baseline": {}, "top_critical": {}}

    monkeypatch.setattr(importlib.import_module(module), function, phase)
    assert main(["stop"]) == 0 and Path("flags/stop.flag").exists()
    capsys.readouterr()
    assert main([command]) == 0
    assert seen == {"stop requested at start": False}
    assert not Path("flags/stop.flag").exists()
    assert capsys.readouterr().err.count("removed a stale stop request (flags/stop.flag)") == 1
