"""The release's choice of student: routed only when routing did not cost fidelity."""

from __future__ import annotations

import json

import pytest

from nexus.errors import NexusError
from nexus.release.config import choose_student


def make(results, key, summary=None):
    (results / key / "model").mkdir(parents=True)
    (results / key / "model" / "config.json").write_text("{}")
    if summary is not None:
        (results / key / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(("routed", "dense", "expected"), [(3.5, 0.5, "train"), (0.4, 0.5, "router")])
def test_best_compares_router_with_its_dense_start(tmp_path, routed, dense, expected):
    make(tmp_path, "train", {"eval": {"kd": 0.7}})
    make(tmp_path, "router", {"eval": {"kd": routed}, "dense_eval": {"kd": dense}})
    path, reason = choose_student("best", tmp_path)
    assert path == str(tmp_path / expected / "model") and expected in reason


def test_explicit_choices_and_fallbacks(tmp_path):
    with pytest.raises(NexusError, match="no trained student"):
        choose_student("best", tmp_path)
    make(tmp_path, "distill")
    assert choose_student("best", tmp_path)[0] == str(tmp_path / "distill" / "model")
    with pytest.raises(NexusError, match="run that phase first"):
        choose_student("router", tmp_path)
    assert choose_student("some/model", tmp_path)[0] == "some/model"


def _pipeline_yaml(tmp_path, teacher, benchmark: str) -> str:
    path = tmp_path / "nexus.yaml"
    path.write_text(
        f"teacher: {teacher}\nresults_dir: {tmp_path / 'results'}\nrelease_dir: {tmp_path / 'rel'}\n"
        f"flags_dir: {tmp_path / 'flags'}\nrelease:\n  benchmark:\n{benchmark}"
    )
    return str(path)


@pytest.mark.parametrize(
    ("benchmark", "refused"),
    [
        ("    tasks: [builtin]\n", True),  # builtin includes builtin-code
        ("    tasks: [builtin-code]\n    allow_unsandboxed_code: true\n", False),
        ("    tasks: [builtin-math]\n", False),
        ("    enabled: false\n", False),
    ],
    ids=["code-refused", "code-allowed", "no-code", "benchmark-off"],
)
def test_code_tasks_without_a_sandbox_are_refused_before_phase_1(
    tmp_path, tiny_llama_dir, monkeypatch, capsys, benchmark, refused
):
    """Item 2 of issue 14: the release benchmark's refusal of code tasks on a machine without
    namespaces comes at pipeline start (one ``nexus: error:`` line, exit 2), not in phase 5."""
    import nexus.benchmark.sandbox as sandbox
    import nexus.profiling.phase as profile_phase
    from nexus.cli import main

    monkeypatch.setattr(sandbox, "isolation_mode", lambda: "none")  # the probe finds no namespaces
    started = []

    def phase_1(*args, **kwargs):
        started.append(1)
        raise NexusError("phase 1 reached")

    monkeypatch.setattr(profile_phase, "run_profile", phase_1)
    rc = main(["run", "--config", _pipeline_yaml(tmp_path, tiny_llama_dir, benchmark)])
    err = capsys.readouterr().err
    assert rc == 2
    if refused:
        assert not started
        (line,) = [ln for ln in err.splitlines() if ln.startswith("nexus: error:")]
        assert "namespaces" in line and "--allow-unsandboxed-code" in line
        assert "release.benchmark.allow_unsandboxed_code" in line
    else:
        assert started and "nexus: error: phase 1 reached" in err  # checked, then phase 1 ran


@pytest.mark.parametrize(
    ("gguf", "teacher", "message"),
    [
        ("q4_k", "llama", "release.gguf must be none or one of f32, f16, bf16, q8_0, got 'q4_k'"),
        ("f16", "mixtral", "release.gguf is f16, but 'mixtral' is a mixture-of-experts model"),
        ("f16", "llama", None),  # exportable: checked, then phase 1 runs
    ],
)
def test_release_gguf_set_on_the_command_line_is_checked_before_phase_1(
    tmp_path, tiny_tokenizer, tiny_llama_dir, monkeypatch, capsys, gguf, teacher, message
):
    import tiny

    import nexus.profiling.phase as profile_phase
    from nexus.cli import main

    if teacher == "mixtral":
        model = tiny.build_model("mixtral", tiny_tokenizer, num_layers=1, hidden=32, intermediate=64)
        teacher_dir = tiny.save_model(model, tiny_tokenizer, tmp_path / "moe")
    else:
        teacher_dir = tiny_llama_dir

    def phase_1(*args, **kwargs):
        raise NexusError("phase 1 reached")

    monkeypatch.setattr(profile_phase, "run_profile", phase_1)
    yaml = _pipeline_yaml(tmp_path, teacher_dir, "    enabled: false\n")
    rc = main(["run", "--config", yaml, "--set", f"release.gguf={gguf}"])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("nexus: error:")]
    assert rc == 2 and (message or "nexus: error: phase 1 reached") in line
