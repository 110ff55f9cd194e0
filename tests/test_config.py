"""Typed config loading: strict keys, types, overrides, resolved config written out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from nexus.config import config_hash, load_config, parse_overrides, save_resolved
from nexus.errors import NexusError


@dataclass
class Optim:
    lr: float = 1e-4
    warmup_steps: int = 10


@dataclass
class PhaseConfig:
    teacher: str = "default"
    layers: list[int] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    precision: str = "auto"
    max_steps: int | None = None
    weights: dict[str, float] = field(default_factory=lambda: {"code": 1.0, "chat": 1.0})

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")


def test_yaml_section_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  teacher: foo\n  optim:\n    lr: 3\n  layers: [1, 2]\n")
    cfg = load_config(
        PhaseConfig,
        path,
        section="distill",
        overrides=parse_overrides(["optim.warmup_steps=5", "max_steps=7"]),
    )
    assert cfg == PhaseConfig(teacher="foo", layers=[1, 2], optim=Optim(lr=3.0, warmup_steps=5), max_steps=7)
    assert isinstance(cfg.optim.lr, float)
    # YAML 1.1 reads 5e-5 (no dot) as a string: a float field still takes it
    assert load_config(PhaseConfig, overrides=parse_overrides(["optim.lr=5e-5"])).optim.lr == 5e-5
    # a mapping field merges over its default (one weight changes, the others stay)
    assert load_config(PhaseConfig, overrides=parse_overrides(["weights.chat=2"])).weights == {
        "code": 1.0,
        "chat": 2.0,
    }
    with pytest.raises(NexusError, match="'lr': expected a number, got 'fast'"):
        load_config(PhaseConfig, overrides=parse_overrides(["optim.lr=fast"]))


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  optim:\n    learning_rate: 3\n")
    with pytest.raises(NexusError, match=r"unknown config key 'learning_rate' in .*c\.yaml"):
        load_config(PhaseConfig, path, section="distill")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("distill:\n  teacher: [unclosed\n  x: 1\n")
    with pytest.raises(NexusError, match=r"malformed YAML in .*bad\.yaml \(line \d+"):
        load_config(PhaseConfig, path, section="distill")


def test_type_errors_and_post_init(tmp_path):
    with pytest.raises(NexusError, match="'max_steps': expected an integer"):
        load_config(PhaseConfig, overrides={"max_steps": "ten"})
    with pytest.raises(NexusError, match="precision must be"):
        load_config(PhaseConfig, overrides={"precision": "fp8"})


def test_none_overrides_do_not_clobber_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher: foo\n")
    assert load_config(PhaseConfig, path, overrides={"teacher": None}).teacher == "foo"


def test_resolved_config_round_trip_and_hash(tmp_path):
    cfg = PhaseConfig(layers=[3, 1])
    written = save_resolved(cfg, tmp_path / "out")
    again = load_config(PhaseConfig, written)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(PhaseConfig(layers=[1, 3])) != config_hash(cfg)
    assert yaml.safe_load(written.read_text())["optim"]["lr"] == 1e-4
