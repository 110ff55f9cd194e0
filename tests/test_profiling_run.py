"""The profiler on tiny models: known-identity and known-critical layers, outputs, CLI, errors."""

from __future__ import annotations

import json
import os

import pytest
import tiny
import torch

from nexus.cli import main
from nexus.data import Example
from nexus.profiling.config import PlanConfig, ProfileConfig
from nexus.profiling.engine import Perturbation
from nexus.profiling.phase import load_profile, run_profile
from nexus.profiling.probes import encode_probes
from nexus.profiling.profiler import profile_model

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "Ava has 3 apples. Ben gives Ava 2 more. 3 + 2 = 5\n#### 5",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
]


def _trained_model(tokenizer):
    """4 layers: layer 1 an exact identity (attention and MLP outputs zeroed), layers 0 and 3
    random and weak, layer 2 the only one trained on the probe texts, so removing it must hurt most."""
    model = tiny.build_model("llama", tokenizer, num_layers=4, seed=0)
    layers = model.model.layers
    with torch.no_grad():
        layers[1].self_attn.o_proj.weight.zero_()
        layers[1].mlp.down_proj.weight.zero_()
        for i in (0, 3):
            layers[i].self_attn.o_proj.weight.mul_(0.1)
            layers[i].mlp.down_proj.weight.mul_(0.1)
    params = list(layers[2].parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    ids = torch.tensor([sum((tokenizer(t)["input_ids"] for t in TEXTS), [])])
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_identity_layer_has_zero_sensitivity_and_trained_layer_the_largest(tiny_tokenizer):
    model = _trained_model(tiny_tokenizer)
    probes = encode_probes(
        "code",
        [Example("text", str(i), "code", text=t) for i, t in enumerate(TEXTS)],
        tiny_tokenizer,
        max_tokens=64,
    )
    result = profile_model(model, [probes], perturbation=Perturbation("removal"), batch_tokens=128)
    cap = result["capabilities"]["code"]
    assert abs(cap["sensitivity"][1]) < 1e-5
    assert cap["block_influence"][1] < 1e-5
    assert max(range(4), key=lambda i: cap["sensitivity"][i]) == 2
    assert cap["sensitivity"][2] > 0.05
    assert cap["block_influence"][2] > cap["block_influence"][1]


@pytest.fixture
def probe_files(tmp_path):
    code = tmp_path / "code.jsonl"
    code.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    math = tmp_path / "gsm8k.jsonl"
    math.write_text(
        "".join(
            json.dumps({"question": f"What is {a} + {a}?", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"})
            + "\n"
            for a in range(1, 6)
        )
    )
    # (PIQA rows would be refused: evaluation-only, see test_profiling_probes.py)
    commonsense = tmp_path / "commonsense.jsonl"
    commonsense.write_text(
        "".join(
            json.dumps({"prompt": f"How do I open jar {i}?", "response": "Twist the lid."}) + "\n"
            for i in range(4)
        )
    )
    return {"code": code, "math": math, "commonsense": commonsense}


def test_run_profile_writes_outputs_and_plan(tmp_path, tiny_llama_dir, probe_files):
    cfg = ProfileConfig(
        model=str(tiny_llama_dir),
        name="tiny",
        capabilities=["code", "math"],
        probes=[
            f"code={probe_files['code']}",
            str(probe_files["math"]),
            f"commonsense={probe_files['commonsense']}",
        ],
        num_probes=3,
        plan=PlanConfig(keep_layers=3, critical_per_capability=1),
    )
    summary = run_profile(cfg, results_dir=tmp_path / "results", flags=None)
    out = tmp_path / "results" / "profile"
    for name in (
        "tiny.json",
        "tiny.csv",
        "tiny.png",
        "tiny_probes.jsonl",
        "tiny_config.yaml",
        "student_plan.json",
    ):
        assert (out / name).is_file(), name
    profile = load_profile(out / "tiny.json")
    assert list(profile["capabilities"]) == ["code", "math", "commonsense"]
    assert profile["layers"] == [0, 1, 2, 3]
    assert profile["capabilities"]["commonsense"]["accuracy"] is None  # no multiple choice
    assert profile["capabilities"]["code"]["accuracy"] is None
    assert all(c["num_probes"] == 3 for c in profile["capabilities"].values())
    assert len(profile["model"]["identity"]) == 64
    csv_lines = (out / "tiny.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("layer,code_sensitivity")
    status = json.loads((tmp_path / "results" / "status.json").read_text())
    assert status["phase"] == 1 and status["status"] == "Completed" and status["step"] == 12
    plan = json.loads((out / "student_plan.json").read_text())
    assert len(plan["keep_layers"]) == 3 and plan["keep_layers"][0] == 0 and plan["keep_layers"][-1] == 3
    assert summary["keep_layers"] == plan["keep_layers"]
    assert set(summary["top_critical"]) == {"code", "math", "commonsense"}

    # The same model compared with its own profile (reusing its probes file): perfectly aligned.
    again = run_profile(
        ProfileConfig(
            model=str(tiny_llama_dir), name="again", compare=str(out / "tiny.json"), capabilities=[]
        ),
        results_dir=tmp_path / "results",
    )
    assert again["alignment"]["overall"] == pytest.approx(1.0)
    assert all(c["same_probes"] for c in again["alignment"]["capabilities"].values())


def test_stop_flag_stops_between_layers(tmp_path, tiny_llama_dir, probe_files):
    from nexus.monitor import Flags

    flags = Flags(tmp_path / "flags")
    flags.stop()
    cfg = ProfileConfig(
        model=str(tiny_llama_dir), capabilities=["code"], probes=[f"code={probe_files['code']}"]
    )
    summary = run_profile(cfg, results_dir=tmp_path / "results", flags=flags)
    assert summary == {"stopped": True, "steps_done": 1, "total_steps": 4}
    assert json.loads((tmp_path / "results" / "status.json").read_text())["status"] == "Stopped"
    assert not (tmp_path / "results" / "profile").exists()


def test_cli_profile_and_plan(tmp_path, monkeypatch, capsys, tiny_llama_dir, tiny_qwen2_dir, probe_files):
    monkeypatch.chdir(tmp_path)
    probes = ["--probes", f"code={probe_files['code']}", "--probes", f"math={probe_files['math']}"]
    rc = main(
        [
            "profile",
            "--model",
            str(tiny_llama_dir),
            *probes,
            "--capabilities",
            "code,math",
            "--num-probes",
            "2",
            "--name",
            "t",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "top critical layers" in out and "  code: " in out and "  math: " in out
    profile = tmp_path / "results" / "profile" / "t.json"
    rc = main(["plan", "--profile", str(profile), "--keep", "2", "--out", "plan.json"])
    assert rc == 0
    assert json.loads((tmp_path / "plan.json").read_text())["keep_layers"][0] == 0
    # errors: plan target larger than the teacher; a profile from a different model
    assert main(["plan", "--profile", str(profile), "--keep", "9"]) == 2
    assert "larger than the teacher (4 layers)" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile), "--keep", "2", "--model", str(tiny_qwen2_dir)]) == 2
    assert "was made from" in capsys.readouterr().err


def test_plan_rescoring_from_another_directory_finds_the_profiles_probes(
    tmp_path, monkeypatch, capsys, tiny_llama_dir, probe_files
):
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(made)
    args = ["--probes", f"code={probe_files['code']}", "--capabilities", "code", "--num-probes", "2"]
    assert main(["profile", "--model", str(tiny_llama_dir), *args, "--name", "t"]) == 0
    profile = made / "results" / "profile" / "t.json"
    assert json.loads(profile.read_text())["probes_file"] == "t_probes.jsonl"  # beside the profile
    monkeypatch.chdir(elsewhere)
    relative = os.path.relpath(profile, elsewhere)
    plan = ["plan", "--profile", relative, "--keep", "2", "--rescore-every", "1", "--out", "plan.json"]
    capsys.readouterr()
    assert main(plan) == 0, capsys.readouterr().err
    assert len(json.loads((elsewhere / "plan.json").read_text())["keep_layers"]) == 2
    # A profile written before: its probes path is relative to the directory it was made in.
    data = json.loads(profile.read_text())
    profile.write_text(json.dumps({**data, "probes_file": "results/profile/t_probes.jsonl"}))
    (elsewhere / "plan.json").unlink()
    assert main(plan) == 0, capsys.readouterr().err
    assert (elsewhere / "plan.json").is_file()
    (made / "results" / "profile" / "t_probes.jsonl").unlink()
    capsys.readouterr()
    assert main(plan) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t_probes.jsonl" in err and "--rescore-every" in err, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no examples"),
        ('{"text": "ok"}\n{"text": broken\n', "bad.jsonl:2: not valid JSON"),
        ('{"foo": 1}\n', "bad.jsonl:1: unrecognized row"),
    ],
)
def test_cli_bad_probe_files(tmp_path, monkeypatch, capsys, tiny_llama_dir, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text(content)
    rc = main(
        ["profile", "--model", str(tiny_llama_dir), "--probes", "code=bad.jsonl", "--capabilities", "code"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("nexus: error: ") and message in err  # fails before the model is loaded
    assert "Traceback" not in err


def test_probes_longer_than_max_tokens_are_truncated_with_a_warning(tiny_tokenizer, caplog):
    long = Example("chat", "x:1", "math", prompt="word " * 200, response="answer " * 20)
    probes = encode_probes("math", [long], tiny_tokenizer, max_tokens=32)
    assert probes.truncated == 1
    assert len(probes.sequences[0].input_ids) == 32
    assert sum(probes.sequences[0].score_mask) > 0
    assert "truncated to 32 tokens" in caplog.text
