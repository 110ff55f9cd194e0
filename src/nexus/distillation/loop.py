"""The training loop shared by phases 2 (distill), 3 (recovery fine-tuning) and 4 (router).

A plain PyTorch loop, driven by :class:`LoopSettings`: one process, DDP through ``torchrun``
when ``WORLD_SIZE > 1``, or FSDP2 (``fully_shard``) for the student and optionally the teacher
when configured (``distributed`` / ``teacher_sharding`` settings, or ``accelerate launch`` with
an FSDP config; see :mod:`nexus.distillation.parallel`). Use::

    from nexus.distillation.loop import DistillLoop, LoopSettings, LiveTeacherSource

    loop = DistillLoop(
        student,                       # an HF causal LM (trained in place, fp32 master weights)
        tokenizer=tok,                 # saved with every checkpoint
        train=corpus.train,            # nexus.data.packing.PackedRows (input_ids/position_ids/labels)
        heldout=corpus.heldout,        # PackedRows or None
        teacher=LiveTeacherSource(teacher_model, layers=[...]),   # or CachedTeacherSource, or None (CE only)
        settings=LoopSettings.from_config(cfg),   # any object with the LoopSettings field names
        out_dir=Path("results/train"),
        run_config=cfg,                # dataclass: saved as config.yaml, hashed for resume checks
        anchoring=None,                # ActivationAnchoringLoss or None
        extra_loss=None,               # fn(model_outputs, batch) -> (tensor, {"name": float}) e.g. router aux losses
        model_kwargs=None,             # extra kwargs for the student forward (e.g. output_router_logits=True)
        results_dir=Path("results"), flags=None, printer=None, phase=2,
    )
    summary = loop.fit()               # resumes from OUT/checkpoints/ if present; writes OUT/model/

Batches are dicts of ``(B, L)`` tensors: ``input_ids``, ``position_ids`` (restart at each packed
document), ``labels`` (next token or -100) and ``loss_mask = labels != -100``; phase 3 makes
response-only masks by packing with ``loss_on="response"``. The loss of one optimizer step is

    (kd_weight * sum KD + ce_weight * sum CE + anchor_weight * sum anchor) / (scored tokens of
    the whole global batch)  +  mean over micro-batches of extra_loss

so gradient accumulation and data parallelism reproduce one big batch. ``extra_loss`` gets the
student's base-model output (``last_hidden_state``, and whatever ``model_kwargs`` asks for) and
the batch, and returns a per-micro-batch mean plus metrics to log.

Checkpoints (``OUT/checkpoints/checkpoint-<step>/``, atomic, keep-last-N) hold the model, extra
modules (anchoring projections), optimizer, scheduler, RNG states and the step (the data order
is a pure function of seed and step, so the step *is* the data position). ``fit`` on a
directory with checkpoints resumes from the newest one and refuses a different config.
Under FSDP the model and optimizer state are gathered to rank 0 and written in the same format,
so checkpoints resume under any parallelism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nexus.config import save_resolved
from nexus.data.packing import PackedRows
from nexus.distillation import checkpoint as ckpt
from nexus.distillation import parallel
from nexus.distillation.losses import (
    ActivationAnchoringLoss,
    CachedTeacher,
    LiveTeacher,
    _log1mexp,
    fused_lm_head_loss,
)
from nexus.errors import NexusError
from nexus.hardware import autocast, pick_device, resolve_precision
from nexus.models import decoder_layers
from nexus.monitor import (
    Flags,
    GpuTemperature,
    KeyboardPauseCallback,
    StatusPrinter,
    StatusWriter,
    StepAction,
)
from nexus.utils import atomic_write_json, write_dir_atomically

log = logging.getLogger(__name__)

ExtraLossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class LoopSettings:
    """Optimizer, loss and bookkeeping knobs of :class:`DistillLoop`."""

    max_steps: int = 100
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    kd_kind: str = "forward_kl"
    jsd_beta: float = 0.5
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    anchor_weight: float = 0.0
    precision: str = "auto"
    chunk_size: int = 1024
    gradient_checkpointing: bool = False
    device: str | None = None
    eval_every: int = 50
    eval_max_rows: int = 32
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    max_nan_steps: int = 10
    distributed: str = "auto"
    teacher_sharding: str = "auto"

    @classmethod
    def from_config(cls, cfg: Any) -> LoopSettings:
        """Pick the same-named fields from any config object (phase 2, 3 and 4 configs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_batch_rows(step: int, global_batch: int, n_rows: int, seed: int) -> np.ndarray:
    """Row indices of optimizer step ``step``: a fresh seeded permutation each epoch."""
    start = step * global_batch
    out = np.empty(global_batch, dtype=np.int64)
    for j in range(global_batch):
        i = start + j
        epoch, pos = divmod(i, n_rows)
        out[j] = _epoch_perm(n_rows, seed, epoch)[pos]
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_perm(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    key = (n_rows, seed, epoch)
    if key not in _PERM_CACHE:
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        _PERM_CACHE[key] = torch.randperm(n_rows, generator=gen).numpy()
    return _PERM_CACHE[key]


# ----------------------------------------------------------------------------------------
# Distributed context
# ----------------------------------------------------------------------------------------
@dataclass
class DistContext:
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


# ----------------------------------------------------------------------------------------
# Teacher sources: targets at the scored positions of a batch
# ----------------------------------------------------------------------------------------
@dataclass
class TeacherTargets:
    target: LiveTeacher | CachedTeacher  # for the N scored positions, row-major
    states: dict[int, torch.Tensor]  # teacher layer -> (N, Ht) hidden states at the scored positions


class _LayerCapture:
    """Forward hooks storing the outputs of chosen decoder layers (``layer -> (B, T, H)``)."""

    def __init__(self, model: nn.Module, layers: list[int]):
        self.states: dict[int, torch.Tensor] = {}
        blocks = decoder_layers(model)
        for layer in layers:
            if not 0 <= layer < len(blocks):
                raise NexusError(
                    f"anchoring layer {layer} is out of range: the model has layers 0..{len(blocks) - 1}"
                )
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            self.states[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def pop(self) -> dict[int, torch.Tensor]:
        states, self.states = self.states, {}
        return states

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix)


class LiveTeacherSource:
    """Runs the teacher on each batch (no grad) in ``dtype``; keeps only what the loss needs."""

    def __init__(
        self, model: nn.Module, *, layers: list[int] | None = None, dtype: torch.dtype | None = None
    ):
        self.model = model.eval()
        if dtype is not None:
            self.model.to(dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = sorted(set(layers or []))
        self.capture = _LayerCapture(model, self.layers) if self.layers else None
        self._read_head()

    def _read_head(self) -> None:
        head = self.model.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)

    def place(self, device: torch.device, *, mesh=None, par: parallel.Parallelism | None = None) -> None:
        """Move the teacher to ``device`` whole, or shard it over ``mesh`` with FSDP (forward only)."""
        if mesh is None:
            self.model.to(device)
        else:
            parallel.shard_teacher(
                self.model, decoder_layers(self.model), mesh, par or parallel.Parallelism(), device=device
            )
        self._read_head()

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], rows: np.ndarray) -> TeacherTargets:
        out = base_model(self.model)(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        )
        mask = batch["loss_mask"]
        states = {k: v[mask] for k, v in self.capture.pop().items()} if self.capture else {}
        return TeacherTargets(
            LiveTeacher(out.last_hidden_state[mask], self.head_weight, self.head_bias), states
        )


# ----------------------------------------------------------------------------------------
# The student's loss as one module (so DDP sees one forward)
# ----------------------------------------------------------------------------------------
class StudentLoss(nn.Module):
    """Student + trainable extras (anchoring projections); ``forward`` returns the step's loss."""

    def __init__(
        self,
        student: nn.Module,
        settings: LoopSettings,
        *,
        anchoring: ActivationAnchoringLoss | None = None,
        extra_loss: ExtraLossFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.student = student
        self.anchoring = anchoring
        self.settings = settings
        self.extra_loss = extra_loss
        self.model_kwargs = dict(model_kwargs or {})
        self.compute_dtype = compute_dtype
        use_anchor = anchoring is not None and settings.anchor_weight > 0
        self.capture = _LayerCapture(student, anchoring.student_layers) if use_anchor else None

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        teacher: TeacherTargets | None,
        normalizer: float,
        within: Callable[[nn.Module], Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's loss share of ``batch``; with ``within``, ``within(student)`` instead.

        ``within`` runs inside this module's forward, where FSDP has gathered the root
        parameters (embeddings, LM head, projections): evaluation of a sharded student.
        """
        if within is not None:
            return within(self.student)
        s = self.settings
        out = base_model(self.student)(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            **self.model_kwargs,
        )
        mask = batch["loss_mask"]
        hidden = out.last_hidden_state[mask]  # (N, H)
        head = self.student.get_output_embeddings()
        loss, kd, ce = fused_lm_head_loss(
            hidden,
            head.weight,
            batch["labels"][mask],
            teacher.target if teacher is not None else None,
            normalizer=normalizer,
            kind=s.kd_kind,
            temperature=s.temperature,
            beta=s.jsd_beta,
            kd_weight=s.kd_weight if teacher is not None else 0.0,
            ce_weight=s.ce_weight,
            head_bias=getattr(head, "bias", None),
            chunk_size=s.chunk_size,
            compute_dtype=self.compute_dtype,
        )
        metrics = {"kd": kd, "ce": ce}
        if self.capture is not None:
            student_states = {k: v[mask] for k, v in self.capture.pop().items()}
            if teacher is None or not teacher.states:
                raise NexusError(
                    "ActivationAnchoringLoss needs teacher hidden states (live teacher or a cache with states)"
                )
            anchor = self.anchoring(student_states, teacher.states, normalizer=normalizer)
            loss = loss + s.anchor_weight * anchor
            metrics["anchor"] = anchor.detach()
        if self.extra_loss is not None:
            extra, extra_metrics = self.extra_loss(out, batch)
            loss = loss + extra / s.grad_accum
            metrics["extra"] = extra.detach() / s.grad_accum
            for k, v in extra_metrics.items():
                metrics[k] = torch.as_tensor(float(v)) / s.grad_accum
        return loss, metrics


# ----------------------------------------------------------------------------------------
# Evaluation: held-out KD, CE, top-1 agreement
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def score_batch(
    student: nn.Module,
    batch: dict[str, torch.Tensor],
    targets: TeacherTargets | None,
    *,
    cached: bool,
    precision: str,
    device: torch.device,
    chunk_size: int,
) -> dict[str, float]:
    """Summed KL(teacher || student), CE and top-1 agreements of one batch, and its token count."""
    head = student.get_output_embeddings()
    with autocast(precision, device):
        out = base_model(student)(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        )
    mask = batch["loss_mask"]
    hidden = out.last_hidden_state[mask]
    labels = batch["labels"][mask]
    sums = {"kl": 0.0, "ce": 0.0, "agree": 0.0, "tokens": int(hidden.shape[0])}
    for c in range(0, hidden.shape[0], chunk_size):
        e = min(hidden.shape[0], c + chunk_size)
        logits = F.linear(hidden[c:e].to(head.weight.dtype), head.weight, getattr(head, "bias", None)).float()
        logp = F.log_softmax(logits, -1)
        sums["ce"] += float(F.nll_loss(logp, labels[c:e], reduction="sum"))
        if targets is None:
            continue
        if cached:
            t = targets.target
            s_top = logp.gather(-1, t.topk_idx[c:e].long())
            s_tail = _log1mexp(torch.logsumexp(s_top, -1))
            t_logp = torch.cat([t.topk_logp[c:e].float(), t.tail_logp[c:e].float()[:, None]], -1)
            s_logp = torch.cat([s_top, s_tail[:, None]], -1)
            sums["kl"] += float((t_logp.exp() * (t_logp - s_logp)).sum())
            teacher_top1 = t.topk_idx[c:e, 0].long()
        else:
            t_logits = targets.target.logits(c, e).float()
            t_logp = F.log_softmax(t_logits, -1)
            sums["kl"] += float((t_logp.exp() * (t_logp - logp)).sum())
            teacher_top1 = t_logits.argmax(-1)
        sums["agree"] += float((logits.argmax(-1) == teacher_top1).sum())
    return sums


@torch.no_grad()
def evaluate_fidelity(
    student: nn.Module,
    teacher: LiveTeacherSource | Any | None,
    rows: PackedRows,
    *,
    max_rows: int | None = None,
    batch_size: int = 4,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    chunk_size: int = 1024,
    scorer: Callable[..., dict[str, float]] | None = None,
) -> dict[str, float]:
    """Mean per-token KL(teacher || student) at T=1, CE on the data and top-1 agreement.

    With a cached teacher the KL is the top-k (K + 1 bins) one and is reported as
    ``kd_topk``; with a live teacher it is the full-vocabulary KL (``kd``). ``scorer``
    replaces :func:`score_batch` (same keyword arguments), e.g. to run it inside an FSDP root.
    """
    device = torch.device(device)
    was_training = student.training
    student.eval()
    n = len(rows) if max_rows is None else min(len(rows), max_rows)
    sums = {"kl": 0.0, "ce": 0.0, "agree": 0.0, "tokens": 0}
    cached = teacher is not None and not isinstance(teacher, LiveTeacherSource)
    score = scorer or functools.partial(score_batch, student)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        batch = {k: v.to(device) for k, v in rows.batch(idx).items()}
        with autocast(precision, device):
            targets = teacher(batch, idx) if teacher is not None else None
        part = score(batch, targets, cached=cached, precision=precision, device=device, chunk_size=chunk_size)
        for key in sums:
            sums[key] += part[key]
    student.train(was_training)
    tokens = max(1, sums["tokens"])
    result = {"ce": sums["ce"] / tokens, "tokens": sums["tokens"]}
    if teacher is not None:
        result["kd_topk" if cached else "kd"] = sums["kl"] / tokens
        result["top1_agreement"] = sums["agree"] / tokens
    return result


def _config_diff(saved_yaml: Path, cfg: Any) -> str:
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


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard event files under ``OUT/tensorboard`` (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but logging must never kill a run
                log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


class DistillLoop:
    """See the module docstring."""

    def __init__(
        self,
        student: nn.Module,
        *,
        tokenizer,
        train: PackedRows,
        heldout: PackedRows | None,
        teacher: LiveTeacherSource | Any | None,
        settings: LoopSettings,
        out_dir: str | Path,
        run_config: Any,
        result_hash: str,
        anchoring: ActivationAnchoringLoss | None = None,
        extra_loss: ExtraLossFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        results_dir: str | Path = "results",
        flags: Flags | None = None,
        printer: StatusPrinter | None = None,
        phase: int = 2,
        dist: DistContext | None = None,
    ):
        self.s = settings
        self.device = pick_device(settings.device)
        self.dist = dist or DistContext.from_env(self.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.par = parallel.resolve_parallelism(
            settings.distributed, settings.teacher_sharding, self.dist.world
        )
        # Under FSDP the student stays where it is: fully_shard moves only each process's shard.
        self.student = student if self.par.fsdp else student.to(self.device)
        self.tokenizer = tokenizer
        self.train_rows, self.heldout = train, heldout
        self.teacher = teacher
        self.out_dir = Path(out_dir)
        self.run_config = run_config
        self.result_hash = result_hash
        self.anchoring = (
            anchoring.to(self.device) if anchoring is not None and not self.par.fsdp else anchoring
        )
        self.results_dir = Path(results_dir)
        self.flags = flags or Flags()
        self.printer = printer
        self.phase = phase
        self.global_batch = settings.micro_batch_size * settings.grad_accum * self.dist.world
        if len(train) < 1:
            raise NexusError("the dataset is empty: no training rows")
        compute_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.module = StudentLoss(
            self.student,
            settings,
            anchoring=self.anchoring,
            extra_loss=extra_loss,
            model_kwargs=model_kwargs,
            compute_dtype=compute_dtype,
        )
        if settings.gradient_checkpointing or self.par.activation_checkpointing:
            self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ddp = None
        self.teacher_sharded = self.par.sharded_teacher and isinstance(teacher, LiveTeacherSource)
        mesh = (
            parallel.device_mesh(self.device, self.dist.world)
            if self.par.fsdp or self.teacher_sharded
            else None
        )
        if self.par.fsdp:
            parallel.shard_student(
                self.module,
                decoder_layers(self.student),
                mesh,
                self.par,
                device=self.device,
                param_dtype=torch.bfloat16 if self.precision == "bf16" else None,
            )
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if isinstance(teacher, LiveTeacherSource):
            teacher.place(self.device, mesh=mesh if self.teacher_sharded else None, par=self.par)
        if self.dist.is_main:
            log.info(
                "parallelism: student %s, teacher %s, %d process(es)%s",
                self.par.student,
                self.par.teacher if isinstance(teacher, LiveTeacherSource) else "cached/none",
                self.dist.world,
                "".join(f"; {note}" for note in self.par.notes),
            )
        params = [p for p in self.module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": settings.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=settings.lr,
            betas=(0.9, 0.95),
            # The fused kernel is ~5x faster than foreach on CPU; FSDP's sharded DTensor
            # parameters take the foreach path.
            **({"foreach": True} if self.par.student == "fsdp" else {"fused": True}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step, warmup=settings.warmup_steps, total=settings.max_steps, min_ratio=settings.min_lr_ratio
            ),
        )
        self.step = 0
        self.nan_steps = 0
        self.tokens_seen = 0

    # -- checkpoints -------------------------------------------------------------------
    def _weights(self, *, optimizer: bool) -> tuple[dict | None, dict[str, torch.Tensor], dict | None]:
        """(student state dict or None = the live module, projections, optimizer state dict).

        Under FSDP this gathers full state dicts onto rank 0 (collective: every rank calls it);
        otherwise it reads the in-memory modules.
        """
        if not self.par.fsdp:
            if not self.dist.is_main:
                return None, {}, None
            extra = self.anchoring.projection_state_dict() if self.anchoring is not None else {}
            return None, extra, self.optimizer.state_dict() if optimizer else None
        full = parallel.gather_model_state(self.module)
        optim = parallel.gather_optimizer_state(self.module, self.optimizer) if optimizer else None
        student = {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")}
        prefix = "anchoring.projections."
        extra = {k.removeprefix(prefix): v for k, v in full.items() if k.startswith(prefix)}
        return student, extra, optim

    def _save_student(self, directory: Path, state: dict[str, torch.Tensor] | None) -> None:
        if state is None:
            self.student.save_pretrained(directory, safe_serialization=True)
        else:
            self.student.save_pretrained(directory, state_dict=state, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    def save_checkpoint(self) -> Path | None:
        student_state, extra, optim_state = self._weights(optimizer=True)
        if self.dist.is_main:

            def write(tmp: Path) -> None:
                from safetensors.torch import save_file

                self._save_student(tmp / "model", student_state)
                if extra:
                    save_file(
                        {k: v.contiguous().cpu() for k, v in extra.items()}, str(tmp / "extra.safetensors")
                    )
                state = {
                    "step": self.step,
                    "nan_steps": self.nan_steps,
                    "tokens_seen": self.tokens_seen,
                    "data_position": self.step * self.global_batch,
                    "optimizer": optim_state,
                    "scheduler": self.scheduler.state_dict(),
                    "rng_torch": torch.get_rng_state(),
                    "rng_python": list(random.getstate()[1]),
                }
                torch.save(state, tmp / "trainer_state.pt")
                save_resolved(self.run_config, tmp)

            path = ckpt.write_checkpoint(
                self.out_dir,
                self.step,
                write,
                meta={
                    "result_hash": self.result_hash,
                    "world_size": self.dist.world,
                    "parallelism": self.par.student,
                },
                keep_last=self.s.keep_last,
            )
        else:
            path = None
        self.dist.barrier()
        return path

    def try_resume(self) -> Path | None:
        """Load the newest complete checkpoint of ``out_dir`` (refusing another run's)."""
        if self.dist.is_main:
            ckpt.clean_partial(self.out_dir)
        self.dist.barrier()
        latest = ckpt.latest_checkpoint(self.out_dir)
        if latest is None:
            return None
        meta = ckpt.read_meta(latest)
        if meta.get("result_hash") != self.result_hash:
            raise NexusError(
                f"{self.out_dir} holds checkpoints of another run with a different config "
                f"({_config_diff(latest / 'config.yaml', self.run_config)}); use another --out or delete "
                "that directory to start over"
            )
        if self.par.fsdp:
            state = ckpt.load_trainer_state(latest, mmap=True)
            self._load_sharded(latest, state)
        else:
            ckpt.load_model_weights(self.student, latest / "model")
            if self.anchoring is not None and (latest / "extra.safetensors").is_file():
                from safetensors.torch import load_file

                self.anchoring.projections.load_state_dict(load_file(str(latest / "extra.safetensors")))
            state = ckpt.load_trainer_state(latest)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate((3, tuple(state["rng_python"]), None))
        self.step, self.nan_steps, self.tokens_seen = state["step"], state["nan_steps"], state["tokens_seen"]
        log.info("resuming from %s (step %d)", latest, self.step)
        return latest

    def _load_sharded(self, latest: Path, state: dict[str, Any]) -> None:
        """FSDP resume: rank 0 reads the full weights, broadcasts them, every rank keeps its shard."""
        full = None
        if self.dist.is_main:
            weights = ckpt.read_model_state(self.student, latest / "model")
            full = {f"student.{k}": v for k, v in weights.items()}
            if self.anchoring is not None and len(self.anchoring.projections):
                extra_file = latest / "extra.safetensors"
                if not extra_file.is_file():
                    raise NexusError(
                        f"checkpoint {latest} has no {extra_file.name} for the anchoring projections"
                    )
                from safetensors.torch import load_file

                full.update({f"anchoring.projections.{k}": v for k, v in load_file(str(extra_file)).items()})
        parallel.load_model_state(self.module, full)
        parallel.load_optimizer_state(
            self.module, self.optimizer, state["optimizer"], is_main=self.dist.is_main
        )

    # -- one optimizer step --------------------------------------------------------------
    def _train_step(self) -> tuple[float | None, dict[str, float], int]:
        s, d = self.s, self.dist
        rows = global_batch_rows(self.step, self.global_batch, len(self.train_rows), s.seed)
        normalizer = max(1, self.train_rows.scored_tokens(rows))
        model = self.ddp or self.module
        self.module.train()
        sums: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(s.grad_accum):
            offset = (micro * d.world + d.rank) * s.micro_batch_size
            idx = rows[offset : offset + s.micro_batch_size]
            batch = {k: v.to(self.device) for k, v in self.train_rows.batch(idx).items()}
            sync = micro == s.grad_accum - 1
            ctx = model.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast(self.precision, self.device):
                    targets = self.teacher(batch, idx) if self.teacher is not None else None
                    loss, metrics = model(batch, targets, normalizer)
                # DDP averages gradients over ranks; the loss is a share of a global sum, so undo that.
                (loss * d.world).backward()
            loss_sum += loss.detach().double().cpu()
            for k, v in metrics.items():
                sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double().cpu()
        packed = torch.stack([loss_sum, *[sums[k] for k in sorted(sums)]])
        d.all_reduce(packed)
        total = float(packed[0])
        metrics = {k: float(v) for k, v in zip(sorted(sums), packed[1:], strict=True)}
        finite = math.isfinite(total)
        grad_norm = None
        if finite and s.max_grad_norm > 0:
            grad_norm = parallel.global_norm(
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), s.max_grad_norm)
            )
            finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        else:
            self.nan_steps += 1
            log.warning(
                "step %d: non-finite loss/gradient, step skipped (%d so far)", self.step + 1, self.nan_steps
            )
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped (non-finite) step still advances the schedule
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        tokens = int(rows.size * self.train_rows.seq_len)
        return (total if finite else None), metrics, tokens

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        """Held-out fidelity on rank 0; on every rank (same rows) when a model is FSDP-sharded,
        since its forward is then collective."""
        if self.heldout is None or not (self.dist.is_main or self.par.fsdp or self.teacher_sharded):
            return None
        teacher = self.teacher.heldout() if hasattr(self.teacher, "heldout") else self.teacher
        scorer = None
        if self.par.fsdp:

            def scorer(batch, targets, **kw):
                return self.module(
                    batch, targets, 1.0, within=lambda student: score_batch(student, batch, targets, **kw)
                )

        result = evaluate_fidelity(
            self.student,
            teacher,
            self.heldout,
            max_rows=self.s.eval_max_rows,
            batch_size=self.s.micro_batch_size,
            precision=self.precision,
            device=self.device,
            chunk_size=self.s.chunk_size,
            scorer=scorer,
        )
        if self.par.fsdp:
            self.module.reshard()  # back to the float32 shards before a checkpoint gathers them
        return result

    # -- fit ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        s, d = self.s, self.dist
        torch.manual_seed(s.seed)
        random.seed(s.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        start_step = self.step
        writer = StatusWriter(
            self.results_dir,
            phase=self.phase,
            total_steps=s.max_steps,
            throughput_unit="tok/s",
            gpu=GpuTemperature().start() if d.is_main else None,
            enabled=d.is_main,
        )
        callback = KeyboardPauseCallback(
            writer, flags=self.flags, printer=self.printer if d.is_main else None
        )
        metrics_log = MetricsLog(self.out_dir, d.is_main)
        if d.is_main:
            save_resolved(self.run_config, self.out_dir)
        stopped = False
        last_loss = None
        step_times: list[float] = []
        eval_metrics: dict[str, float] | None = None
        try:
            writer.update(self.step)
            while self.step < s.max_steps:
                t0 = time.perf_counter()
                loss, metrics, tokens = self._train_step()
                step_times.append(time.perf_counter() - t0)
                self.step += 1
                self.tokens_seen += tokens
                if self.nan_steps > s.max_nan_steps:
                    raise NexusError(
                        f"training diverged: {self.nan_steps} steps had a non-finite loss or gradient "
                        f"(limit max_nan_steps={s.max_nan_steps}); lower the learning rate or check the data"
                    )
                if loss is not None:
                    last_loss = loss
                if self.step % s.log_every == 0 or self.step == s.max_steps:
                    metrics_log.write(
                        self.step,
                        {
                            "loss": loss if loss is not None else float("nan"),
                            **metrics,
                            "tokens_per_s": tokens / step_times[-1],
                            "tokens_seen": self.tokens_seen,
                        },
                    )
                if s.eval_every and self.step % s.eval_every == 0 and self.step < s.max_steps:
                    eval_metrics = self.evaluate()
                    if eval_metrics:
                        metrics_log.write(self.step, eval_metrics, prefix="eval")
                action = StepAction.CONTINUE
                if d.is_main:
                    action = callback.step_boundary(self.step, loss=last_loss, units=tokens)
                stop = d.broadcast_flag(action is StepAction.STOP)
                if self.step % s.save_every == 0 or stop or self.step == s.max_steps:
                    self.save_checkpoint()
                if stop:
                    stopped = True
                    break
            if not stopped:
                eval_metrics = self.evaluate() or eval_metrics
                if eval_metrics:
                    metrics_log.write(self.step, eval_metrics, prefix="eval")
                self._save_final()
                writer.set_status("Completed")
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                writer.set_status(
                    "Failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                )
            raise
        finally:
            metrics_log.close()
            if writer.gpu is not None:
                writer.gpu.stop()
            if self.printer is not None and d.is_main:
                self.printer.finish()
        if self.par.fsdp:
            # Leave the student usable by the caller (e.g. phase 4's routing report): the root's
            # parameters (embeddings, head, norm) gathered on every rank; decoder layers keep
            # all-gathering in their forward, so any later forward must run on every rank.
            self.module.unshard()
        timed = step_times[1:] if len(step_times) > 1 else step_times
        summary = {
            "status": "Stopped" if stopped else "Completed",
            "step": self.step,
            "resumed_from_step": start_step if resumed else None,
            "loss": last_loss,
            "tokens_seen": self.tokens_seen,
            "nan_steps": self.nan_steps,
            "median_step_seconds": float(np.median(timed)) if timed else None,
            "tokens_per_second": (self.global_batch * self.train_rows.seq_len / float(np.median(timed)))
            if timed
            else None,
            "eval": eval_metrics,
            "model_dir": str(self.out_dir / "model") if not stopped else None,
        }
        if d.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
        return summary

    def _save_final(self) -> None:
        """``OUT/model`` (HF dir: the student only) and ``OUT/extra.safetensors`` (projections), atomically."""
        student_state, extra, _ = self._weights(optimizer=False)
        if self.dist.is_main:
            from safetensors.torch import save_file

            def kept() -> str:
                newest = ckpt.latest_checkpoint(self.out_dir)
                return (
                    f"the newest checkpoint {newest} is intact" if newest else "no checkpoint was written"
                ) + "; free space and run again"

            write_dir_atomically(
                self.out_dir / "model",
                lambda tmp: self._save_student(tmp, student_state),
                what="the final model",
                kept=kept,
            )
            if extra:
                save_file(
                    {k: v.contiguous().cpu() for k, v in extra.items()},
                    str(self.out_dir / "anchoring_projections.safetensors"),
                )
            atomic_write_json(
                self.out_dir / "config_hash.json", {"result_hash": self.result_hash, "step": self.step}
            )
        self.dist.barrier()


__all__ = [
    "DistContext",
    "DistillLoop",
    "LiveTeacherSource",
    "LoopSettings",
    "StudentLoss",
    "TeacherTargets",
    "evaluate_fidelity",
    "global_batch_rows",
    "score_batch",
    "lr_factor",
]
