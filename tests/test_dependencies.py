"""pyproject.toml's lower bounds are the versions the code needs, and the installed ones meet them.

The bounds below were found by reading what the code calls and, for transformers, by running
the suite's GGUF tests on 5.0.0 ... 5.7.0; transformers 5.6.0 with sentence-transformers 5.2.0 was
run against a subset of this suite in a throwaway venv (README, "Requirements"). Torch below the pinned 2.13.0 is not run here: other torch versions are
multi-GB CUDA downloads.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# package -> (lowest version that works, why)
NEEDED = {
    "torch": (
        "2.7",
        "fully_shard(..., ignored_params=...) in distillation/parallel.py (2.6 lacks the keyword)",
    ),
    "transformers": (
        "5.6",
        "fused MoE experts (experts.gate_up_proj) since 5.0; up to 5.5.4 a GGUF's tokenizer adds a BOS "
        "token the model's own does not (tests/test_gguf.py::test_gguf_round_trip fails)",
    ),
    "sentence-transformers": ("5.2", "the first release that accepts transformers 5"),
    "accelerate": ("1.1", "transformers 5 requires it"),
    "safetensors": ("0.4.3", "transformers 5 requires it"),
    "gguf": ("0.10", "transformers' GGUF loader requires it"),
}


def declared_minimums() -> dict[str, Version]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep.strip())
        assert match, f"pyproject dependency {dep!r} should be a plain 'name>=version'"
        found[match.group(1).lower()] = Version(match.group(2))
    return found


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_declared_minimum_is_what_the_code_needs(package):
    needed, why = NEEDED[package]
    declared = declared_minimums()[package]
    assert declared >= Version(needed), (
        f"pyproject allows {package} {declared}, but the code needs {needed}: {why}"
    )


def test_installed_versions_meet_the_declared_minimums():
    low = {
        name: version(name)
        for name, minimum in declared_minimums().items()
        if Version(version(name)).release < minimum.release
    }
    assert not low, f"installed below pyproject's minimum: {low}"


def test_fully_shard_takes_ignored_params():
    """The reason for torch >= 2.7, checked on the installed torch."""
    import inspect

    from torch.distributed.fsdp import fully_shard

    assert "ignored_params" in inspect.signature(fully_shard).parameters
