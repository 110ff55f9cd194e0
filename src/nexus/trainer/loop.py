"""``Trainer``: the training loop shared by phases 2 (distill), 3 (train) and 4 (router).

A plain PyTorch loop driven by a :class:`~nexus.trainer.settings.TrainSettings` (each phase
config is one): one process, DDP through ``torchrun`` when ``WORLD_SIZE > 1``, or FSDP2
(``fully_shard``) for the student and optionally the teacher (``distributed`` /
``teacher_sharding``, or ``accelerate launch`` with an FSDP config; see
:mod:`nexus.trainer.parallel`). A phase's recipe uses it as::

    from nexus.trainer import LiveTeacherSource, Trainer

    trainer = Trainer(
        student,                       # an HF causal LM (trained in place, fp32 master weights)
        tokenizer=tok,                 # saved with every checkpoint
        train=corpus.train,            # nexus.data.packing.PackedRows (input_ids/position_ids/labels)
        heldout=corpus.heldout,        # PackedRows or None
        teacher=LiveTeacherSource(teacher_model, layers=[...]),   # or CachedTeacherSource, or None (CE only)
        settings=cfg,                  # the phase config: a TrainSettings
        out_dir=Path("results/train"),
        run_config=cfg,                # dataclass: saved as config.yaml
        result_hash=cfg.result_hash(), # checkpoints of another config are refused on resume
        anchoring=None, anchor_weight=0.0,   # ActivationAnchoringLoss (phase 2) and its weight
        extra_loss=None,               # fn(model_output, batch, step) -> (tensor, {"name": float}), e.g. router losses
        results_dir=Path("results"), flags=None, printer=None, phase=2,
    )
    summary = trainer.fit()            # resumes from OUT/checkpoints/ if present; writes OUT/model/
    # the recipe adds its own keys and writes OUT/summary.json once

``Trainer.for_phase(cfg, student, ...)`` is the same with ``settings``, ``run_config`` and
``result_hash`` taken from the phase config, as every phase does.

Batches are dicts of ``(B, L)`` tensors: ``input_ids``, ``position_ids`` (restart at each packed
document), ``labels`` (next token or -100) and ``loss_mask = labels != -100``; phase 3 makes
response-only masks by packing with ``loss_on="response"``. The step's loss is documented in
:mod:`nexus.trainer.step`.

Checkpoints (``OUT/checkpoints/checkpoint-<step>/``, atomic, keep-last-N) hold the model, extra
modules (anchoring projections), optimizer, scheduler, RNG states and the step (the data order
is a pure function of seed and step, so the step *is* the data position). ``fit`` on a
directory with checkpoints resumes from the newest one and refuses a different config.
Under FSDP the model and optimizer state are gathered to rank 0 and written in the same format,
so checkpoints resume under any parallelism.

(About 500 lines on purpose: ``fit``, the step, evaluation and checkpoint save/resume all read
and write the trainer's state -- step, optimizer, scheduler, RNG, sharded modules; the pure
parts live in :mod:`~nexus.trainer.step`, :mod:`~nexus.trainer.evaluate` and
:mod:`~nexus.trainer.checkpoint`.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nexus.config import save_resolved
from nexus.data.packing import PackedRows
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
    warn_line,
)
from nexus.trainer import checkpoint as ckpt
from nexus.trainer import parallel
from nexus.trainer.anchoring import ActivationAnchoringLoss
from nexus.trainer.evaluate import evaluate_fidelity, heldout_kd, score_batch
from nexus.trainer.metrics import MetricsLog
from nexus.trainer.onpolicy import OnPolicyBatches
from nexus.trainer.parallel import DistContext
from nexus.trainer.settings import TrainSettings
from nexus.trainer.step import ExtraLossFn, StudentLoss, build_optimizer, global_batch_rows
from nexus.trainer.teacher import LiveTeacherSource, TeacherSource
from nexus.utils import atomic_write_json, write_dir_atomically

log = logging.getLogger(__name__)


class Trainer:
    """See the module docstring."""

    @classmethod
    def for_phase(cls, config: TrainSettings, student: nn.Module, **options: Any) -> Trainer:
        """The trainer of a phase whose typed config is both its settings and its run record:
        ``settings=config, run_config=config, result_hash=config.result_hash()``; ``options``
        are the other keyword arguments."""
        return cls(student, settings=config, run_config=config, result_hash=config.result_hash(), **options)

    def __init__(
        self,
        student: nn.Module,
        *,
        tokenizer,
        train: PackedRows,
        heldout: PackedRows | None,
        teacher: TeacherSource | None,
        settings: TrainSettings,
        out_dir: str | Path,
        run_config: Any,
        result_hash: str,
        anchoring: ActivationAnchoringLoss | None = None,
        anchor_weight: float = 0.0,
        extra_loss: ExtraLossFn | None = None,
        results_dir: str | Path = "results",
        flags: Flags | None = None,
        printer: StatusPrinter | None = None,
        phase: int = 2,
        dist: DistContext | None = None,
        onpolicy: OnPolicyBatches | None = None,
        save_dtype: torch.dtype | None = None,
        start_eval: dict[str, float] | None = None,
    ):
        self.s = settings
        # Held-out fidelity of the model this phase started from (step 0): measured by ``fit``
        # unless the caller has it already (phase 4 scores its upcycled student itself).
        self.start_eval = start_eval
        # OUT/model is written in this dtype (e.g. bfloat16 for a teacher that came in 16 bits or
        # fewer, see nexus.models.student_save_dtype); checkpoints keep the float32 master weights.
        self.save_dtype = save_dtype
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
        self.onpolicy = onpolicy  # a fraction of steps trains on the student's own completions
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
        if onpolicy is not None and not isinstance(teacher, LiveTeacherSource):
            raise NexusError(
                "on-policy distillation (lmbda > 0) needs the live teacher to score the completions"
            )
        if onpolicy is not None and self.par.fsdp:
            raise NexusError(
                "on-policy distillation (lmbda > 0) does not run with an FSDP-sharded student: use DDP "
                "(--distributed ddp) or one process"
            )
        compute_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.module = StudentLoss(
            self.student,
            settings,
            anchoring=self.anchoring,
            anchor_weight=anchor_weight,
            extra_loss=extra_loss,
            compute_dtype=compute_dtype,
            world=self.dist.world,
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
        self.optimizer, self.scheduler = build_optimizer(
            self.module, settings, fsdp=self.par.student == "fsdp"
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

    def _save_student(
        self, directory: Path, state: dict[str, torch.Tensor] | None, dtype: torch.dtype | None = None
    ) -> None:
        if dtype is not None:
            source = self.student.state_dict() if state is None else state
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.items()}
        if state is not None:
            # A cast or a gathered state holds tied weights (lm_head = embed_tokens) as separate
            # tensors, which save_pretrained writes twice (168M extra parameters for Gemma 3):
            # alias them again so it keeps one.
            for target, source_key in (getattr(self.student, "all_tied_weights_keys", None) or {}).items():
                if target in state and source_key in state:
                    state[target] = state[source_key]
        if state is None:
            self.student.save_pretrained(directory, safe_serialization=True)
        else:
            self.student.save_pretrained(directory, state_dict=state, safe_serialization=True)
        if dtype is not None:  # save_pretrained records the in-memory dtype (float32)
            config_file = directory / "config.json"
            config = json.loads(config_file.read_text())
            config["dtype"] = str(dtype).removeprefix("torch.")
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    def save_checkpoint(self) -> Path | None:
        student_state, extra, optim_state = self._weights(optimizer=True)
        rng = self.dist.all_gather_object(ckpt.rng_state())  # collective: every rank's RNG
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
                    "rng": rng,  # one entry per rank
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
                f"({ckpt.config_diff(latest / 'config.yaml', self.run_config)}); use another --out or delete "
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
        ckpt.restore_rng(state, self.dist.rank, self.dist.world)
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
    def _onpolicy_batches(self) -> tuple[list[tuple[np.ndarray, dict]], float, int, dict[str, float]]:
        """This process's micro-batches of student completions; the global count of scored
        (generated) tokens as the normalizer, the global token count, metrics."""
        s, d, op = self.s, self.dist, self.onpolicy
        prompts = op.step_prompts(self.step, self.global_batch)
        t0 = time.perf_counter()
        batches = []
        counts = torch.zeros(2, dtype=torch.float64)  # generated tokens, all tokens
        for micro in range(s.grad_accum):
            slot = micro * d.world + d.rank
            idx = prompts[slot * s.micro_batch_size : (slot + 1) * s.micro_batch_size]
            completions = op.generate(self.student, idx, device=self.device, seed_words=(self.step, slot))
            batch = op.batch(idx, completions)
            counts += torch.tensor(
                [float(batch["loss_mask"].sum()), float(sum(len(op.prompts[int(i)]) for i in idx))]
            )
            batches.append((idx, {k: v.to(self.device) for k, v in batch.items()}))
        gen_seconds = time.perf_counter() - t0
        d.all_reduce(counts)
        generated, tokens = int(counts[0]), int(counts[0] + counts[1])
        metrics = {"completion_tokens": generated / self.global_batch, "generate_s": gen_seconds}
        return batches, float(max(1, generated)), tokens, metrics

    def _train_step(self) -> tuple[float | None, dict[str, float], int]:
        s, d = self.s, self.dist
        onpolicy = self.onpolicy is not None and self.onpolicy.is_onpolicy(self.step)
        if onpolicy:
            batches, normalizer, tokens, step_metrics = self._onpolicy_batches()
        else:
            rows = global_batch_rows(self.step, self.global_batch, len(self.train_rows), s.seed)
            normalizer = max(1, self.train_rows.scored_tokens(rows))
            tokens = int(rows.size * self.train_rows.seq_len)
            step_metrics = {}
        model = self.ddp or self.module
        self.module.train()
        self.module.step = self.step  # extra_loss sees the step being taken
        sums: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(s.grad_accum):
            if onpolicy:
                idx, batch = batches[micro]
            else:
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
        if self.onpolicy is not None:
            metrics["onpolicy"] = float(onpolicy)
            metrics.update(step_metrics)
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

    def _evaluate_start(self, metrics_log: MetricsLog) -> None:
        """``self.start_eval``: the held-out fidelity before the first step (``eval`` at step 0 in
        metrics.jsonl), read back from that log after a resume."""
        if self.start_eval is not None or self.heldout is None:
            return
        if self.step == 0:
            self.start_eval = self.evaluate()
            if self.start_eval:
                metrics_log.write(0, self.start_eval, prefix="eval")
            return
        path = self.out_dir / "metrics.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line) if line.strip() else {}
                if row.get("step") == 0 and row.get("split") == "eval":
                    self.start_eval = {k: v for k, v in row.items() if k not in ("step", "split")}

    def _compare_to_start(self, final: dict[str, float] | None) -> None:
        """Say so when the phase ends further from the teacher than it started: a phase that
        leaves the student worse than it found it is a bug in its recipe, not a result."""
        before, after = heldout_kd(self.start_eval), heldout_kd(final)
        if before is None or after is None or not self.dist.is_main:
            return
        line = f"held-out KD {before:.3f} -> {after:.3f} nats/token over this phase"
        if after > before * 1.02:
            warn_line(
                self.printer, f"phase {self.phase} left the student further from the teacher: {line}", log
            )
        else:
            log.debug(line)  # the phase's own summary line shows the change

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
        step_tokens: list[int] = []  # per step: on-policy steps hold fewer tokens than corpus ones
        eval_metrics: dict[str, float] | None = None
        try:
            writer.update(self.step)
            self._evaluate_start(metrics_log)
            while self.step < s.max_steps:
                t0 = time.perf_counter()
                loss, metrics, tokens = self._train_step()
                step_times.append(time.perf_counter() - t0)
                step_tokens.append(tokens)
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
                self._compare_to_start(eval_metrics)
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
        skip = 1 if len(step_times) > 1 else 0  # the first step of a process warms up
        timed, timed_tokens = step_times[skip:], step_tokens[skip:]
        summary = {
            "status": "Stopped" if stopped else "Completed",
            "step": self.step,
            "resumed_from_step": start_step if resumed else None,
            "loss": last_loss,
            "tokens_seen": self.tokens_seen,
            "nan_steps": self.nan_steps,
            "median_step_seconds": float(np.median(timed)) if timed else None,
            # the tokens the timed steps processed over their time (metrics.jsonl has each step's)
            "tokens_per_second": sum(timed_tokens) / sum(timed) if timed else None,
            "eval": eval_metrics,
            "eval_start": self.start_eval,
            "model_dir": str(self.out_dir / "model") if not stopped else None,
        }  # the recipe adds its keys and writes OUT/summary.json
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
                lambda tmp: self._save_student(tmp, student_state, self.save_dtype),
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
