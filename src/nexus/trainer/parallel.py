"""How :class:`~nexus.trainer.loop.Trainer` spreads over processes: none, DDP or FSDP; the process group.

Chosen by configuration only (``distributed`` and ``teacher_sharding`` in the phase-2/3/4
configs, or an ``accelerate launch`` FSDP config), never by code changes:

* ``distributed: auto`` (default): FSDP when the process was started by ``accelerate launch``
  with an FSDP config (``ACCELERATE_USE_FSDP=true`` in the environment), else DDP when
  ``WORLD_SIZE > 1``, else one process. ``ddp`` / ``fsdp`` force a mode; FSDP without a
  multi-process launch is refused.
* ``teacher_sharding: auto`` (default): the live teacher is sharded with FSDP when the student
  is (as TRL's ``GKDTrainer`` does by preparing its teacher with the same accelerator), else
  replicated. ``replicate`` keeps a whole bf16 copy per process (no communication in its
  forward), ``fsdp`` shards it (forward only: no gradients, no optimizer state).

FSDP here is PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per decoder
layer, and the loss module (student + anchoring projections) as the root unit, so the
embeddings, final norm and LM head are gathered for exactly the duration of the loss module's
forward and backward -- which is where the fused chunked LM-head loss and the anchoring
projections read their weights. The teacher gets one unit per decoder layer plus its base model
as root, all resharded after each forward; its LM head (and, if tied, its input embedding)
stays whole on every process because the loss reads it after the teacher's forward.

Checkpoints do not depend on the mode: the model is gathered into a full state dict on rank 0
and saved in HF format, the optimizer state is gathered into a full, integer-keyed
``torch.optim`` state dict (the single-process format), so a checkpoint written under FSDP
resumes under FSDP, DDP or one process, and the other way round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nexus.errors import NexusError
from nexus.trainer.settings import DISTRIBUTED_MODES, TEACHER_SHARDING

log = logging.getLogger(__name__)

# accelerate's FSDP1 sharding strategies (by name or 1-based number) -> FSDP2 reshard_after_forward.
_STRATEGIES = {
    "FULL_SHARD": True,
    "SHARD_GRAD_OP": False,
    "NO_SHARD": None,
    "HYBRID_SHARD": None,
    "HYBRID_SHARD_ZERO2": None,
}
_TRUE = ("1", "true", "yes", "on")


@dataclass
class Parallelism:
    """The resolved mode: ``student`` in ``single | ddp | fsdp``, ``teacher`` in ``replicate | fsdp``."""

    student: str = "single"
    teacher: str = "replicate"
    reshard_after_forward: bool = True
    offload_params: bool = False
    activation_checkpointing: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def fsdp(self) -> bool:
        return self.student == "fsdp"

    @property
    def sharded_teacher(self) -> bool:
        return self.teacher == "fsdp"


def _env_true(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _reshard_after_forward(env: Mapping[str, str]) -> bool:
    """accelerate's ``FSDP_RESHARD_AFTER_FORWARD`` (FSDP2: true/false; FSDP1: a strategy name or
    number) or the older ``FSDP_SHARDING_STRATEGY`` -> FSDP2's ``reshard_after_forward``."""
    for name in ("FSDP_RESHARD_AFTER_FORWARD", "FSDP_SHARDING_STRATEGY"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        value = raw.upper()
        if value in ("TRUE", "FALSE"):
            return value == "TRUE"
        if value.isdigit() and 1 <= int(value) <= len(_STRATEGIES):
            value = list(_STRATEGIES)[int(value) - 1]
        if value not in _STRATEGIES:
            raise NexusError(
                f"{name}={raw} is not an FSDP sharding setting (true, false, FULL_SHARD, SHARD_GRAD_OP)"
            )
        if _STRATEGIES[value] is None:
            raise NexusError(
                f"{name}={raw} is not supported by nexus: use FULL_SHARD or SHARD_GRAD_OP (or DDP for NO_SHARD)"
            )
        return bool(_STRATEGIES[value])
    return True


def resolve_parallelism(
    distributed: str, teacher_sharding: str, world: int, env: Mapping[str, str] | None = None
) -> Parallelism:
    """The mode for ``world`` processes from the config and the launcher's environment."""
    env = os.environ if env is None else env
    if distributed not in DISTRIBUTED_MODES:
        raise NexusError(f"distributed must be one of {', '.join(DISTRIBUTED_MODES)}, not {distributed!r}")
    if teacher_sharding not in TEACHER_SHARDING:
        raise NexusError(
            f"teacher_sharding must be one of {', '.join(TEACHER_SHARDING)}, not {teacher_sharding!r}"
        )
    if _env_true(env, "ACCELERATE_USE_DEEPSPEED"):
        raise NexusError(
            "the accelerate config asks for DeepSpeed, which nexus does not drive: use an FSDP config "
            "(distributed_type: FSDP) or plain torchrun"
        )
    accelerate_fsdp = _env_true(env, "ACCELERATE_USE_FSDP")
    if distributed == "ddp" and accelerate_fsdp:
        raise NexusError(
            "distributed=ddp, but the launcher's accelerate config asks for FSDP (ACCELERATE_USE_FSDP=true): "
            "set distributed to fsdp or auto, or launch without the FSDP config"
        )
    if distributed == "fsdp" or (distributed == "auto" and accelerate_fsdp):
        student = "fsdp"
    else:
        student = "ddp" if world > 1 else "single"
    teacher = (
        teacher_sharding if teacher_sharding != "auto" else ("fsdp" if student == "fsdp" else "replicate")
    )
    for what, asked in (
        ("FSDP for the student", student == "fsdp"),
        ("an FSDP-sharded teacher", teacher == "fsdp"),
    ):
        if asked and world < 2:
            raise NexusError(
                f"{what} needs a distributed launch with at least 2 processes (torchrun --nproc_per_node N "
                f"-m nexus ..., or accelerate launch --num_processes N -m nexus ...); this process has WORLD_SIZE={world}"
            )
    par = Parallelism(student=student, teacher=teacher)
    if accelerate_fsdp:
        par.reshard_after_forward = _reshard_after_forward(env)
        par.offload_params = _env_true(env, "FSDP_OFFLOAD_PARAMS")
        par.activation_checkpointing = _env_true(env, "FSDP_ACTIVATION_CHECKPOINTING")
        if env.get("FSDP_VERSION", "2").strip() not in ("", "2"):
            par.notes.append("FSDP_VERSION=1 asked: nexus always shards with FSDP2 (fully_shard)")
        if env.get("FSDP_STATE_DICT_TYPE", "").upper() == "SHARDED_STATE_DICT":
            par.notes.append(
                "FSDP_STATE_DICT_TYPE=SHARDED_STATE_DICT ignored: checkpoints hold full state dicts"
            )
        if env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP") != "TRANSFORMER_BASED_WRAP":
            par.notes.append(
                f"FSDP_AUTO_WRAP_POLICY={env['FSDP_AUTO_WRAP_POLICY']} ignored: one unit per decoder layer, "
                "the loss module as root"
            )
    return par


def device_mesh(device: torch.device, world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


def _fsdp_kwargs(par: Parallelism, device: torch.device) -> dict[str, Any]:
    from torch.distributed.fsdp import CPUOffloadPolicy

    if par.offload_params and device.type == "cpu":
        par.notes.append("FSDP_OFFLOAD_PARAMS ignored: the parameters already live on the CPU")
        return {}
    return {"offload_policy": CPUOffloadPolicy()} if par.offload_params else {}


def shard_student(
    loss_module: nn.Module,
    layers: Iterable[nn.Module],
    mesh,
    par: Parallelism,
    *,
    device: torch.device,
    param_dtype: torch.dtype | None = None,
) -> None:
    """``fully_shard`` each decoder layer, then ``loss_module`` (student + extras) as the root.

    ``param_dtype=torch.bfloat16`` all-gathers bf16 copies for compute and reduces gradients in
    float32 into the float32 master shards (FSDP2's ``MixedPrecisionPolicy``).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    extra = _fsdp_kwargs(par, device)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=par.reshard_after_forward, mp_policy=mp, **extra)
    fully_shard(loss_module, mesh=mesh, mp_policy=mp, **extra)


def shard_teacher(model: nn.Module, layers: Iterable[nn.Module], mesh, par: Parallelism, *, device) -> None:
    """Forward-only FSDP for a frozen teacher: decoder layers and the base model, resharded after
    every forward; the LM head (and an input embedding tied to it) stays whole, on ``device``."""
    from torch.distributed.fsdp import fully_shard

    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()}
    extra = _fsdp_kwargs(par, device)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, **extra)
    ignored = {p for p in base.parameters() if id(p) in head_ids}
    fully_shard(base, mesh=mesh, reshard_after_forward=True, ignored_params=ignored or None, **extra)
    head.to(device)


def _is_dtensor(x: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def global_norm(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP: its full value)."""
    return float(norm.full_tensor() if _is_dtensor(norm) else norm)


def alias_names(module: nn.Module) -> set[str]:
    """Parameter names that repeat another name's tensor (tied weights: ``lm_head.weight``)."""
    unique = {name for name, _ in module.named_parameters()}
    return {name for name, _ in module.named_parameters(remove_duplicate=False)} - unique


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) state dict of an FSDP module, on the CPU of rank 0 (``{}`` elsewhere).

    Collective: every rank must call it. Tied aliases are dropped, as ``save_pretrained`` does.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_options(cpu_offload=True))
    aliases = alias_names(module)
    return {k: v for k, v in state.items() if k not in aliases}


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Load a full state dict (read on rank 0 only; ``None`` elsewhere) into an FSDP module.

    Collective. Tied aliases missing from ``state`` are filled from the tensor they alias.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    full: dict[str, torch.Tensor] = {}
    if state is not None:
        full = dict(state)
        by_id: dict[int, list[str]] = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
        for names in by_id.values():
            present = [n for n in names if n in full]
            for n in names:
                if present and n not in full:
                    full[n] = full[present[0]]
    set_model_state_dict(module, full, options=_options(broadcast_from_rank0=True))


def _param_fqns(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in ``optimizer.state_dict()`` integer-id order."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state on rank 0 (``{}`` elsewhere) in ``torch.optim``'s integer-keyed format.

    Collective. An optimizer that has not stepped yet is saved as is (no state to gather; this
    also keeps torch's state-dict helper from initializing it with a zero step).
    """
    if not optimizer.state:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True))
    if not full:
        return {}
    index = {name: i for i, name in enumerate(_param_fqns(module, optimizer))}
    return {
        "state": {index[name]: value for name, value in full["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]],
    }


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], *, is_main: bool
) -> None:
    """Load an integer-keyed full optimizer state dict into the optimizer of an FSDP module.

    Collective when the saved optimizer had stepped (``state["state"]`` non-empty, the same
    on every rank): rank 0's copy is converted to parameter names, broadcast and sharded.
    Without state only the groups' hyper-parameters are loaded, locally.
    """
    if not state["state"]:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    full: dict[str, Any] = {}
    if is_main:
        names = _param_fqns(module, optimizer)
        full = {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
    set_optimizer_state_dict(module, optimizer, full, options=_options(broadcast_from_rank0=True))


__all__ = [
    "DISTRIBUTED_MODES",
    "TEACHER_SHARDING",
    "Parallelism",
    "alias_names",
    "device_mesh",
    "gather_model_state",
    "gather_optimizer_state",
    "global_norm",
    "load_model_state",
    "load_optimizer_state",
    "resolve_parallelism",
    "shard_student",
    "shard_teacher",
]


# ----------------------------------------------------------------------------------------
# The process group
# ----------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """This process's place in the group (``torchrun`` / ``accelerate launch`` environment)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: torch.device) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank (collective)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_flag(self, value: bool) -> bool:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([1 if value else 0])
        dist.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
