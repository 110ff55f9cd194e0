"""Atomic, resumable training checkpoints: ``OUT/checkpoints/checkpoint-<step>/``.

Layout of one checkpoint::

    checkpoint-<step>/
        model/                    HF directory (safetensors + tokenizer): `resolve_model` loads it
        extra.safetensors         trained modules that are not part of the model (anchoring projections)
        trainer_state.pt          optimizer, scheduler, RNG states (CPU, Python, CUDA when used),
                                  step, data position, counters
        config.yaml               the resolved config of the run
        meta.json                 step, config hash (result-affecting fields)

It is written into a temporary sibling directory, every file is fsynced, then the directory is
renamed into place and the parent fsynced: a checkpoint directory either exists complete or not
at all, whatever kills the process. Older checkpoints beyond ``keep_last`` are removed only
after the new one is in place. A failed write (disk full, ...) removes the partial temp dir and
leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nexus.errors import NexusError
from nexus.utils import recover_dir, write_dir_atomically

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
META = "meta.json"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``out_dir``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / META).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def write_checkpoint(
    out_dir: str | Path,
    step: int,
    writer: Callable[[Path], None],
    *,
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Create ``checkpoint-<step>`` atomically; ``writer(tmp_dir)`` writes the content."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"

    def write(tmp: Path) -> None:
        writer(tmp)
        (tmp / META).write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")

    def kept() -> str:
        previous = latest_checkpoint(out_dir)
        return f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"

    write_dir_atomically(final, write, what="checkpoint", kept=kept)
    for old_step, path in list_checkpoints(out_dir)[:-keep_last]:
        if old_step != step:
            shutil.rmtree(path, ignore_errors=True)
    return final


def clean_partial(out_dir: str | Path) -> None:
    """Remove temp directories left by a process killed while checkpointing."""
    root = Path(out_dir) / "checkpoints"
    if root.is_dir():
        for path in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
        for aside in root.glob(".checkpoint-*.old"):  # a replace killed mid-way: the old copy goes back
            recover_dir(root / aside.name[1 : -len(".old")])


def cuda_rng_state() -> list[torch.Tensor] | None:
    """Every GPU's RNG state when CUDA is initialised in this process (dropout, sampling), else None."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return None


def restore_cuda_rng(states: list[torch.Tensor] | None) -> None:
    """Restore :func:`cuda_rng_state`'s states. A checkpoint without them (CPU run, older
    checkpoint) leaves the CUDA RNG as seeded; another GPU count restores the common devices
    with a warning (resume is then not bit-exact where randomness is used on GPU)."""
    if states is None:
        return
    if not torch.cuda.is_available():
        log.warning("the checkpoint holds CUDA RNG states but CUDA is not available: not restored")
        return
    count = torch.cuda.device_count()
    if len(states) != count:
        log.warning(
            "the checkpoint holds CUDA RNG states of %d GPU(s), this process sees %d: restoring the "
            "first %d (resume is not bit-exact where dropout or sampling runs on GPU)",
            len(states),
            count,
            min(count, len(states)),
        )
    for device, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(state, device)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, Python, CUDA when used); a checkpoint keeps one per rank."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "cuda": cuda_rng_state()}


def restore_rng(trainer_state: dict[str, Any], rank: int, world: int) -> None:
    """Restore rank ``rank``'s RNG states from a checkpoint's trainer state. Checkpoints written
    before per-rank states hold rank 0's only, which every rank then takes (as they did); on
    another number of processes rank ``r`` takes state ``r mod saved`` with a warning (resume is
    then not bit-exact where dropout or sampling uses the global RNG)."""
    per_rank = trainer_state.get("rng")
    if per_rank is None:
        per_rank = [
            {
                "torch": trainer_state["rng_torch"],
                "python": trainer_state["rng_python"],
                "cuda": trainer_state.get("rng_cuda"),
            }
        ]
    elif len(per_rank) != world and rank == 0:
        log.warning(
            "the checkpoint holds the RNG states of %d process(es), this run has %d: not bit-exact "
            "where dropout or sampling uses the global RNG",
            len(per_rank),
            world,
        )
    mine = per_rank[rank % len(per_rank)]
    torch.set_rng_state(mine["torch"])
    random.setstate((3, tuple(mine["python"]), None))
    restore_cuda_rng(mine["cuda"])


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / META).read_text())


def load_trainer_state(checkpoint: Path, *, mmap: bool = False) -> dict[str, Any]:
    """``trainer_state.pt``; ``mmap=True`` maps its tensors instead of reading them (under FSDP
    every process opens it, but only rank 0 uses the optimizer state)."""
    return torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True, mmap=mmap)


def read_model_state(model: torch.nn.Module, model_dir: Path) -> dict[str, torch.Tensor]:
    """A ``save_pretrained`` directory's weights as a state dict in ``model``'s in-memory layout.

    The weights go through transformers' own loader, not a raw safetensors read: ``save_pretrained``
    may store another layout than the model holds in memory (transformers 5 writes Mixtral experts
    as per-expert ``w1/w2/w3`` and fuses them on load), so only the loader maps them back exactly.
    """
    if not list(model_dir.glob("*.safetensors")):
        raise NexusError(f"checkpoint {model_dir} holds no weights")
    dtype = next(model.parameters()).dtype
    loaded, info = type(model).from_pretrained(
        model_dir, dtype=dtype, use_safetensors=True, output_loading_info=True
    )
    bad = {k: sorted(info.get(k) or [])[:3] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise NexusError(
            f"checkpoint {model_dir} does not match the model (missing {bad['missing_keys']}, "
            f"unexpected {bad['unexpected_keys']}, other shapes {bad['mismatched_keys']})"
        )
    return loaded.state_dict()


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load a ``save_pretrained`` directory's weights into ``model`` in place (see :func:`read_model_state`)."""
    state = read_model_state(model, model_dir)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise NexusError(
            f"checkpoint {model_dir} does not match the model: {str(exc).splitlines()[0]}"
        ) from None


def config_diff(saved_yaml: Path, cfg: Any) -> str:
    """``"lr 0.0001 -> 0.0002, ..."`` between a checkpoint's config.yaml and ``cfg``."""
    import yaml

    from nexus.config import to_dict

    try:
        old = yaml.safe_load(saved_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return f"see {saved_yaml}"
    new = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    changed = [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return ", ".join(changed[:4]) or f"see {saved_yaml}"
