"""Which parallelism the loop picks from the config and the launcher (fast, single process).

The 2-process runs of the same code paths are in test_distill_distributed.py (slow).
"""

from __future__ import annotations

import pytest

from nexus.cli import main
from nexus.distillation.config import DistillConfig
from nexus.errors import NexusError
from nexus.trainer.parallel import resolve_parallelism

ACCELERATE_FSDP = {  # what `accelerate launch` exports for an FSDP2 config (accelerate 1.x)
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_OFFLOAD_PARAMS": "false",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_ACTIVATION_CHECKPOINTING": "false",
}


def test_auto_is_one_process_then_ddp_under_torchrun():
    one = resolve_parallelism("auto", "auto", 1, env={})
    assert (one.student, one.teacher) == ("single", "replicate")
    two = resolve_parallelism("auto", "auto", 2, env={})
    assert (two.student, two.teacher, two.fsdp) == ("ddp", "replicate", False)


def test_accelerate_fsdp_config_selects_fsdp_for_student_and_teacher():
    par = resolve_parallelism("auto", "auto", 2, env=ACCELERATE_FSDP)
    assert (par.student, par.teacher) == ("fsdp", "fsdp")
    assert par.reshard_after_forward and not par.offload_params and not par.activation_checkpointing
    assert par.notes == []  # nothing of that config is ignored
    replicated = resolve_parallelism("auto", "replicate", 2, env=ACCELERATE_FSDP)
    assert (replicated.student, replicated.teacher) == ("fsdp", "replicate")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("FULL_SHARD", True), ("SHARD_GRAD_OP", False), ("2", False)],
)
def test_accelerate_reshard_setting_maps_to_fsdp2(value, expected):
    env = {**ACCELERATE_FSDP, "FSDP_RESHARD_AFTER_FORWARD": value}
    assert resolve_parallelism("auto", "auto", 4, env=env).reshard_after_forward is expected


def test_accelerate_offload_activation_checkpointing_and_ignored_settings():
    env = {
        **ACCELERATE_FSDP,
        "FSDP_OFFLOAD_PARAMS": "true",
        "FSDP_ACTIVATION_CHECKPOINTING": "true",
        "FSDP_VERSION": "1",
        "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
        "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP",
    }
    par = resolve_parallelism("auto", "auto", 2, env=env)
    assert par.offload_params and par.activation_checkpointing
    assert len(par.notes) == 3 and any("FSDP_VERSION=1" in n for n in par.notes)


@pytest.mark.parametrize(
    ("distributed", "teacher", "world", "env", "message"),
    [
        ("fsdp", "auto", 1, {}, "FSDP for the student needs a distributed launch .* WORLD_SIZE=1"),
        ("auto", "auto", 1, ACCELERATE_FSDP, "FSDP for the student needs a distributed launch"),
        ("ddp", "fsdp", 1, {}, "an FSDP-sharded teacher needs a distributed launch"),
        ("ddp", "auto", 2, ACCELERATE_FSDP, "distributed=ddp, but the .* accelerate config asks for FSDP"),
        ("auto", "auto", 2, {"ACCELERATE_USE_DEEPSPEED": "true"}, "asks for DeepSpeed"),
        ("auto", "auto", 2, {**ACCELERATE_FSDP, "FSDP_RESHARD_AFTER_FORWARD": "NO_SHARD"}, "NO_SHARD"),
        ("zero3", "auto", 2, {}, "distributed must be one of auto, ddp, fsdp"),
    ],
)
def test_bad_setups_are_refused_with_one_line(distributed, teacher, world, env, message):
    with pytest.raises(NexusError, match=message) as info:
        resolve_parallelism(distributed, teacher, world, env=env)
    assert "\n" not in str(info.value)


def test_config_validates_the_fields():
    with pytest.raises(ValueError, match="teacher_sharding must be one of auto, replicate, fsdp"):
        DistillConfig(teacher_sharding="sharded")


def test_cli_fsdp_without_a_distributed_launch_exits_2_before_loading(tmp_path, monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    # The teacher does not exist: the parallelism check has to come first to produce this message.
    code = main(["distill", "--teacher", str(tmp_path / "missing"), "--distributed", "fsdp",
                 "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nexus: error: FSDP for the student needs a distributed launch"), err
