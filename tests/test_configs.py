"""Every shipped YAML in configs/ loads and validates, and the generated CLI flags of the
training phases follow the one precedence rule of every command: default < file < flag < --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.cli import build_parser
from nexus.cli_flags import config_overrides
from nexus.config import load_config
from nexus.distillation.config import DistillConfig
from nexus.pipeline.phases import PHASES
from nexus.pipeline.runner import PipelineContext, load_pipeline_config
from nexus.router.config import RouterConfig
from nexus.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PIPELINE_YAMLS = sorted(CONFIGS.glob("*.yaml"))
TASK_YAMLS = sorted((CONFIGS / "tasks").glob("*.yaml"))


def test_configs_are_found():
    assert {p.name for p in PIPELINE_YAMLS} >= {"default.yaml", "quick.yaml"} and TASK_YAMLS


@pytest.mark.parametrize("path", PIPELINE_YAMLS, ids=lambda p: p.name)
def test_pipeline_yaml_builds_every_phase_config(path, tmp_path):
    config, source = load_pipeline_config(path, None, {})
    ctx = PipelineContext(config, tmp_path / "results", None, None, None, source)
    built = {phase.key: phase.build_config(ctx) for phase in PHASES}
    assert all(built[k] is not None for k in ("profile", "distill", "train", "router", "release"))
    assert path.read_text().startswith("#")  # opens with the command that runs it
    assert "nexus run" in path.read_text().split("\n\n")[0] or "run_nexus_master.sh" in path.read_text()


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.name)
def test_task_yaml_loads(path):
    from nexus.benchmark.tasks import load_task_yaml

    assert load_task_yaml(path)


@pytest.mark.parametrize(
    ("command", "cls", "section"),
    [
        ("distill", DistillConfig, "distill"),
        ("train", TrainConfig, "train"),
        ("router", RouterConfig, "router"),
    ],
)
def test_set_beats_flag_beats_file_in_every_training_command(command, cls, section, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  lr: 0.5\n  warmup_steps: 3\n  seq_len: 32\n  temperature: 1.5\n")
    args = build_parser().parse_args(
        [command, "--config", str(path), "--set", "lr=0.25", "--set", "warmup_steps=4", "--lr", "0.125",
         "--batch-size", "2", "--kd", "jsd", "--temperature", "2"]
    )  # fmt: skip
    cfg = load_config(cls, path, section=section, overrides=config_overrides(args, cls))
    assert (cfg.lr, cfg.warmup_steps, cfg.seq_len) == (0.25, 4, 32)
    assert (cfg.micro_batch_size, cfg.kd_kind, cfg.temperature) == (2, "jsd", 2.0)  # flag over file
    assert cfg.max_steps == cls().max_steps  # untouched: the phase's own default


def test_per_phase_defaults_of_the_shared_settings():
    assert (DistillConfig().warmup_steps, TrainConfig().warmup_steps, RouterConfig().warmup_steps) == (
        20,
        10,
        10,
    )
    assert (DistillConfig().lr, TrainConfig().lr, RouterConfig().lr) == (2e-4, 1e-4, 1e-4)
    assert (TrainConfig().kd_weight, TrainConfig().ce_weight, RouterConfig().kd_weight) == (0.5, 0.5, 1.0)


def test_help_shows_field_help_and_phase_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--warmup-steps WARMUP_STEPS linear warm-up steps (default: 20)" in out
    assert "--kd {forward_kl,reverse_kl,jsd}" in out and "--teacher-cache TEACHER_CACHE" in out


def test_extends_merges_a_preset_over_its_base_and_refuses_cycles(tmp_path):
    from nexus.config import read_yaml
    from nexus.errors import NexusError
    from nexus.models.depth import depth_in_layers

    small = read_yaml(CONFIGS / "small.yaml")
    default = read_yaml(CONFIGS / "default.yaml")
    # a share, like the default's 2/3: 15 of the default teacher's 30 layers, 9 of Gemma 3 270M's 18
    assert small["profile"]["plan"]["keep_layers"] == 0.5
    assert [depth_in_layers(0.5, n) for n in (30, 18)] == [15, 9]
    assert small["profile"]["num_probes"] == default["profile"]["num_probes"]  # merged, not replaced
    assert small["distill"] == default["distill"] and "extends" not in small
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nx: 1\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ny: 2\n")
    with pytest.raises(NexusError, match="cycle"):
        read_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(NexusError, match="not found"):
        read_yaml(tmp_path / "c.yaml")
