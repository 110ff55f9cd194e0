"""The pipeline runner with stand-in phases: resume, config change, stop, failure, lock."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nexus.errors import NexusError
from nexus.monitor import Flags, StatusWriter, read_status
from nexus.monitor.lock import PipelineLock
from nexus.pipeline.runner import Phase, PipelineConfig, run_pipeline


@dataclass
class StepsConfig:
    steps: int = 3
    fail: bool = False


def make_phases(calls: list[str]) -> list[Phase]:
    def build(key):
        return lambda ctx: StepsConfig(**getattr(ctx.config, key))

    def run(key):
        def _run(cfg, ctx):
            calls.append(key)
            if cfg.fail:
                raise RuntimeError("boom")
            (ctx.results_dir / key / "out.txt").write_text(str(cfg.steps))
            return {"steps": cfg.steps}

        return _run

    return [
        Phase(i, key, key.title(), build(key), run(key), lambda s: f"steps {s['steps']}")
        for i, key in enumerate(["profile", "distill", "train"], 1)
    ]


def run(tmp_path, calls, **kwargs):
    config = PipelineConfig(
        results_dir=str(tmp_path / "results"), flags_dir=str(tmp_path / "flags"), **kwargs.pop("config", {})
    )
    stream = io.StringIO()
    code = run_pipeline(config, source="test", phases=make_phases(calls), stream=stream, **kwargs)
    return code, stream.getvalue()


def test_resume_skips_completed_phases(tmp_path):
    calls = []
    assert run(tmp_path, calls)[0] == 0
    assert calls == ["profile", "distill", "train"]
    code, out = run(tmp_path, calls)
    assert code == 0 and calls == ["profile", "distill", "train"]
    assert out.count("complete, skipped") == 3
    assert read_status(tmp_path / "results/status.json")["status"] == "Completed"


def test_changed_config_reruns_that_phase_and_later(tmp_path):
    calls = []
    run(tmp_path, calls)
    calls.clear()
    code, out = run(tmp_path, calls, config={"distill": {"steps": 5}})
    assert code == 0 and calls == ["distill", "train"]
    assert "config changed" in out
    assert list((tmp_path / "results").glob("distill.archive-*/out.txt")), "old output must be kept"


def test_failed_phase_keeps_earlier_and_resumes_there(tmp_path):
    calls = []
    with pytest.raises(NexusError, match="phase 2 .Distill. failed: RuntimeError: boom"):
        run(tmp_path, calls, config={"distill": {"fail": True}})
    status = read_status(tmp_path / "results/status.json")
    assert status["status"] == "Failed" and "boom" in status["error"]
    calls.clear()
    assert run(tmp_path, calls)[0] == 0
    assert calls == ["distill", "train"]


def test_failed_status_keeps_the_step_and_times_the_phase_reached(tmp_path):
    def distill(cfg, ctx):
        own = StatusWriter(ctx.results_dir, phase=2, total_steps=9)
        time.sleep(0.2)
        own.update(4, loss=1.25)
        raise RuntimeError("out of memory")

    phases = make_phases([])
    phases[1].run = distill
    config = PipelineConfig(results_dir=str(tmp_path / "results"), flags_dir=str(tmp_path / "flags"))
    with pytest.raises(NexusError, match="out of memory"):
        run_pipeline(config, source="t", phases=phases, only="distill", stream=io.StringIO())
    status = read_status(tmp_path / "results/status.json")
    assert (status["status"], status["step"], status["total_steps"], status["loss"]) == ("Failed", 4, 9, 1.25)
    assert status["error"] == "RuntimeError: out of memory" and status["active_seconds"] >= 0.2


def test_only_and_from(tmp_path):
    calls = []
    run(tmp_path, calls, only="distill")
    assert calls == ["distill"]
    calls.clear()
    run(tmp_path, calls, start="2")
    assert calls == ["train"]  # distill is complete with the same config


def test_fresh_archives_results(tmp_path):
    calls = []
    run(tmp_path, calls)
    run(tmp_path, calls, fresh=True)
    assert len(calls) == 6
    assert list(tmp_path.glob("results.archive-*/profile/COMPLETE.json"))


def test_stop_flag_stops_with_status_and_resumes(tmp_path):
    calls = []
    phases = make_phases(calls)
    original = phases[1].run

    def stopping(cfg, ctx):
        ctx.flags.stop()
        return {"stopped": True, "steps": 0}

    phases[1].run = stopping
    config = PipelineConfig(results_dir=str(tmp_path / "results"), flags_dir=str(tmp_path / "flags"))
    assert run_pipeline(config, source="t", phases=phases, stream=io.StringIO()) == 130
    assert not (tmp_path / "results/distill/COMPLETE.json").exists()
    phases[1].run = original
    assert run_pipeline(config, source="t", phases=phases, stream=io.StringIO()) == 0
    assert calls == ["profile", "distill", "train"]


def test_stale_stop_flag_is_cleared_at_start_in_one_line(tmp_path):
    Flags(tmp_path / "flags").stop()  # `nexus stop` while nothing ran
    calls = []
    code, out = run(tmp_path, calls)
    assert code == 0 and calls == ["profile", "distill", "train"]
    assert out.count("removed a stale stop request") == 1


def test_completed_status_keeps_the_phase_and_pipeline_times(tmp_path):
    def distill(cfg, ctx):  # like a real phase: loads, then its own writer runs, pauses and completes
        time.sleep(0.2)
        own = StatusWriter(ctx.results_dir, phase=2, total_steps=3)
        own.update(1, loss=1.5)
        own.set_status("Paused")
        time.sleep(0.3)
        own.set_status("Running")
        time.sleep(0.1)
        own.update(3, loss=0.5)
        own.set_status("Completed")
        return {"steps": 3}

    phases = make_phases([])
    phases[1].run = distill
    config = PipelineConfig(results_dir=str(tmp_path / "results"), flags_dir=str(tmp_path / "flags"))
    t0 = time.monotonic()
    assert run_pipeline(config, source="t", phases=phases, only="distill", stream=io.StringIO()) == 0
    wall = time.monotonic() - t0
    status = read_status(tmp_path / "results/status.json")
    assert (status["status"], status["phase"], status["step"], status["loss"]) == ("Completed", 2, 3, 0.5)
    assert 0.6 <= status["elapsed_seconds"] <= wall, "the whole phase, loading included"
    assert 0.3 <= status["elapsed_seconds"] - status["active_seconds"] <= 0.5, "the pause, and only it"
    assert status["elapsed_seconds"] <= status["pipeline_elapsed_seconds"] <= wall + 0.05


def test_second_pipeline_refused_and_stale_lock_taken_over(tmp_path):
    results = tmp_path / "results"
    with PipelineLock(results), pytest.raises(NexusError, match="another nexus run"):
        PipelineLock(results).acquire()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (results / ".pipeline.lock").write_text(json.dumps({"pid": int(dead.stdout)}))
    lock = PipelineLock(results).acquire()
    assert json.loads((results / ".pipeline.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not Path(results / ".pipeline.lock").exists()


def test_moved_results_folder_resumes_without_rerunning(tmp_path):
    """Phases hand each other files by path inside results/; a moved folder is still complete."""

    @dataclass
    class PlanConfig:
        plan: str
        steps: int = 3

    calls = []

    def phases():
        def build(ctx):  # like phase 2's `plan`: a path into the results folder
            return PlanConfig(plan=str(ctx.results_dir / "profile" / "plan.json"))

        def run_phase(cfg, ctx):
            calls.append("distill")
            return {"steps": cfg.steps}

        return [Phase(1, "distill", "Distill", build, run_phase, lambda s: f"steps {s['steps']}")]

    def go(results):
        config = PipelineConfig(results_dir=str(results), flags_dir=str(tmp_path / "flags"))
        stream = io.StringIO()
        assert run_pipeline(config, source="test", phases=phases(), stream=stream) == 0
        return stream.getvalue()

    go(tmp_path / "a" / "results")
    (tmp_path / "a").rename(tmp_path / "b")
    out = go(tmp_path / "b" / "results")
    assert calls == ["distill"] and "complete, skipped" in out, out
