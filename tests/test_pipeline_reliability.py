"""`nexus run` as a user runs it: SIGKILL inside every training phase, resume, same weights."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nexus.monitor import read_status

TRAINING_PHASES = {"distill": 2, "train": 3, "router": 4}
STEPS = 8


def _section(**extra) -> dict:
    return {
        "data": ["builtin:code=8,math=24,chat=0"],
        "max_steps": STEPS,
        "micro_batch_size": 2,
        "seq_len": 64,
        "warmup_steps": 2,
        "eval_every": 0,
        "eval_max_rows": 2,
        "save_every": 1,
        "keep_last": 2,
        "precision": "fp32",
        "device": "cpu",
        **extra,
    }


def write_config(path: Path, teacher: Path, **sections) -> Path:
    config = {
        "teacher": str(teacher),
        "seed": 0,
        "profile": {"enabled": False},
        "distill": _section(student_layers=2, anchor_weight=0.3),
        "train": _section(),
        "router": _section(calibration_tokens=256),
        "release": {"enabled": False},
        **sections,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def nexus_run(config: Path) -> list[str]:
    return [sys.executable, "-m", "nexus", "run", "--config", str(config)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def wait_for(proc, status_file: Path, accept, what: str, timeout: float = 120) -> dict:
    """Poll status.json until *this* process (a Popen or a pexpect child, whose output is drained
    meanwhile so it never blocks on a full terminal) writes a status that ``accept`` takes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(status_file) or {}
        if status.get("pid") == proc.pid and accept(status):
            return status
        if hasattr(proc, "read_nonblocking"):
            import pexpect

            with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
                proc.read_nonblocking(1 << 16, timeout=0)
        if not (proc.isalive() if hasattr(proc, "isalive") else proc.poll() is None):
            raise AssertionError(f"nexus run exited before {what}")
        time.sleep(0.01)
    raise AssertionError(f"no {what} within {timeout} s")


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(reference: Path, got: Path, context: str) -> None:
    ref, new = weights(reference), weights(got)
    assert ref.keys() == new.keys(), context
    different = [k for k in ref if not (ref[k] == new[k]).all()]
    assert not different, f"{context}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_sigkill_in_every_training_phase_then_resume_is_bit_identical(tiny_llama_dir, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for cwd in (reference, killed):
        cwd.mkdir()
        write_config(cwd / "pipeline.yaml", tiny_llama_dir)
    subprocess.run(nexus_run(reference / "pipeline.yaml"), cwd=reference, env=ENV, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    results = killed / "results"
    for key, number in TRAINING_PHASES.items():
        # stdin is no terminal: a SIGKILLed run must not leave a developer's terminal in cbreak mode
        proc = subprocess.Popen(nexus_run(killed / "pipeline.yaml"), cwd=killed, env=ENV, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            # Step 2 reported means checkpoint-1 is on disk, so the rerun must resume, not restart.
            # The kill lands at a random step (2 .. STEPS - 3) plus a random instant within a step
            # or two: a tiny model's steps take milliseconds, so a delay in seconds alone could let
            # the phase finish first.
            at = rng.randint(2, STEPS - 3)
            wait_for(proc, results / "status.json", lambda s, n=number, k=at: s["phase"] == n and s["step"] >= k,
                     f"phase {number} step {at}")  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.02))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: phase {key} ended before the kill"
        assert not (results / key / "COMPLETE.json").exists(), f"seed {seed}: killed after {key} completed"

    done = subprocess.run(nexus_run(killed / "pipeline.yaml"), cwd=killed, env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Pipeline complete" in done.stderr
    assert read_status(results / "status.json")["status"] == "Completed"
    for key in TRAINING_PHASES:
        summary = json.loads((results / key / "summary.json").read_text())
        assert summary["step"] == STEPS
        # A kill between the last checkpoint and COMPLETE.json resumes from step STEPS with no step
        # left to run: still a resume, not a restart.
        assert summary["resumed_from_step"] is not None and 1 <= summary["resumed_from_step"] <= STEPS, (
            f"seed {seed}: {key} did not resume from a checkpoint ({summary['resumed_from_step']})"
        )
        assert_same_weights(
            reference / "results" / key / "model", results / key / "model", f"kill seed {seed}, phase {key}"
        )
    # What the release would choose from (router vs its dense start) survives the kill too.
    ref_router = json.loads((reference / "results/router/summary.json").read_text())
    got_router = json.loads((results / "router/summary.json").read_text())
    for field in ("dense_eval", "init_eval", "router_entropy_before", "load_per_domain_before"):
        assert got_router[field] == ref_router[field], f"seed {seed}: router {field}"


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc/<pid>/stat (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_pause_flag_pauses_nexus_run_idle_and_resumes_without_counting_the_pause(tiny_llama_dir, tmp_path):
    steps, hold = 24, 3.0
    config = write_config(
        tmp_path / "pipeline.yaml",
        tiny_llama_dir,
        distill=_section(student_layers=2, max_steps=steps, save_every=100),
        train={"enabled": False},
        router={"enabled": False},
    )
    status_file, pause_flag = tmp_path / "results/status.json", tmp_path / "flags/pause.flag"
    proc = subprocess.Popen(nexus_run(config), cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(proc, status_file, lambda s: s["phase"] == 2 and s["step"] >= 1, "distill step 1")
        pause_flag.parent.mkdir(exist_ok=True)
        pause_flag.touch()
        asked_at = read_status(status_file)["step"]  # the newest boundary that may have missed the flag
        paused = wait_for(proc, status_file, lambda s: s["status"] == "Paused", "Paused status")
        paused_seen = time.monotonic()
        assert asked_at <= paused["step"] <= asked_at + 1, (
            f"paused at step {paused['step']}, asked at {asked_at}"
        )
        assert paused["step"] < steps

        time.sleep(0.3)  # let the last step's worker threads settle
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rate = (cpu1 - cpu0) / (t1 - t0)
        assert rate < 0.1, f"paused process used {rate:.3f} CPU seconds per second"
        still = read_status(status_file)
        assert still["status"] == "Paused" and still["step"] == paused["step"], (
            "training went on while paused"
        )

        time.sleep(max(0.0, hold - (time.monotonic() - paused_seen)))
        late = read_status(status_file)  # rewritten while paused: `nexus status` sees a live clock
        assert late["status"] == "Paused" and abs(late["active_seconds"] - paused["active_seconds"]) < 0.01
        for clock in ("elapsed_seconds", "pipeline_elapsed_seconds"):
            assert late[clock] >= paused[clock] + 1.5, f"{clock} frozen while paused"
        pause_flag.unlink()
        held = time.monotonic() - paused_seen
        after = wait_for(
            proc,
            status_file,
            lambda s: s["status"] == "Running" and s["step"] > paused["step"],
            "resumed step",
        )
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads((tmp_path / "results/distill/summary.json").read_text())
    assert summary["step"] == steps and summary["status"] == "Completed"

    # Elapsed time counts the pause, active time does not: their gap is the time we held the flag
    # (plus at most one 0.5 s poll of the flag and the status write lag).
    gap = after["elapsed_seconds"] - after["active_seconds"]
    assert held - 0.1 <= gap <= held + 1.5, f"paused {held:.2f} s but elapsed - active = {gap:.2f} s"
    # The ETA is (remaining steps) x an EMA (weight 0.1) of active seconds per step. Had the pause
    # been counted, the k-th step after it would add >= 0.1 * held * 0.9**(k-1) per remaining step.
    k = after["step"] - paused["step"]
    remaining_paused, remaining_after = steps - paused["step"], steps - after["step"]
    expected = paused["eta_seconds"] * remaining_after / remaining_paused
    leak = remaining_after * 0.1 * held * 0.9 ** (k - 1)
    assert after["eta_seconds"] < expected + leak / 2, (
        f"ETA {after['eta_seconds']} s after the pause vs {expected:.2f} s before it: the pause leaked into it"
    )


def test_key_p_in_the_terminal_pauses_and_resumes_nexus_run(tiny_llama_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    config = write_config(
        tmp_path / "pipeline.yaml",
        tiny_llama_dir,
        distill=_section(student_layers=2, max_steps=60, save_every=100),
        train={"enabled": False},
        router={"enabled": False},
    )
    status_file, pause_flag = tmp_path / "results/status.json", tmp_path / "flags/pause.flag"
    child = pexpect.spawn(sys.executable, nexus_run(config)[1:], cwd=str(tmp_path), env=ENV, encoding="utf-8",
                          timeout=60, dimensions=(40, 200))  # fmt: skip
    child.logfile_read = io.StringIO()
    terminal = termios.tcgetattr(child.child_fd)  # the pty's settings before nexus touches them
    try:
        child.expect_exact("keys: p pause/resume, s stop")
        assert not termios.tcgetattr(child.child_fd)[3] & termios.ECHO, "keys are read unechoed"
        wait_for(child, status_file, lambda s: s["phase"] == 2 and s["step"] >= 1, "distill step 1")
        child.send("p")
        paused = wait_for(child, status_file, lambda s: s["status"] == "Paused", "Paused after the key p")
        assert pause_flag.exists(), "the key must pause through flags/pause.flag"
        shown = subprocess.run([sys.executable, "-m", "nexus", "status", "--results", "results"], cwd=tmp_path,
                               env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
        assert shown.returncode == 0 and shown.stdout.rstrip().endswith("| Paused"), shown.stdout
        child.send("p")
        wait_for(
            child, status_file, lambda s: s["status"] == "Running" and s["step"] > paused["step"], "resume"
        )
        assert not pause_flag.exists()
        child.sendcontrol("c")  # the terminal still turns Ctrl-C into SIGINT: a clean stop
        child.expect_exact("stopping cleanly")
        child.expect(pexpect.EOF)
        after = termios.tcgetattr(child.child_fd)
    finally:
        child.close(force=True)
    assert child.exitstatus == 130, child.logfile_read.getvalue()[-2000:]
    assert after == terminal, "nexus run must give the terminal back as it found it"
    log = child.logfile_read.getvalue()
    assert "p: pausing at the next step boundary" in log and "p: resuming" in log
    assert read_status(status_file)["status"] == "Stopped"
