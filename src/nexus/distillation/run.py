"""``run_distill``: phase 2's recipe, top to bottom.

setup models (teacher, student, anchoring) -> setup data -> setup teacher (live, or the top-k
cache) -> on-policy prompts (``lmbda > 0``) -> :meth:`Trainer.fit <nexus.trainer.loop.Trainer.fit>` (resumes) -> OUT/summary.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from nexus.distillation.config import DistillConfig
from nexus.distillation.student import (
    check_same_vocab,
    default_anchor_pairs,
    pruned_student,
    same_vocab,
)
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter

log = logging.getLogger(__name__)


def run_distill(
    config: DistillConfig,
    *,
    results_dir: Path = Path("results"),
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
    cache_only: bool = False,
) -> dict[str, Any]:
    """Phase 2: distill ``config.teacher`` into a student; returns a short summary.

    Outputs under ``config.out`` (default ``results_dir/distill``): ``model/`` (the student, HF dir),
    ``anchoring_projections.safetensors`` (when anchoring, apart from the model), ``checkpoints/``,
    ``metrics.jsonl``, ``tensorboard/``, ``config.yaml``, ``summary.json``. With ``cache_only``
    it stops after building the teacher cache.
    """
    from nexus.data.corpus import build_corpus
    from nexus.hardware import pick_device, resolve_precision
    from nexus.models import decoder_layers, load_model, load_tokenizer, student_save_dtype
    from nexus.trainer.anchoring import ActivationAnchoringLoss, check_anchor_pairs
    from nexus.trainer.cache import cache_key, prepare_teacher_cache, teacher_fingerprint
    from nexus.trainer.cross_tokenizer import CrossTokenizerKD
    from nexus.trainer.loop import Trainer
    from nexus.trainer.parallel import DistContext, resolve_parallelism
    from nexus.trainer.teacher import LiveTeacherSource
    from nexus.utils import atomic_write_json

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "distill"
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    dist = DistContext.from_env(device)
    # A bad parallel setup fails here, before any model is loaded (the trainer resolves it again).
    par = resolve_parallelism(config.distributed, config.teacher_sharding, dist.world)
    if config.lmbda > 0 and par.fsdp:
        raise NexusError(
            "on-policy distillation (--lmbda > 0) does not run with an FSDP-sharded student: use DDP "
            "(--distributed ddp) or one process"
        )
    torch.manual_seed(config.seed)

    # -- setup models ------------------------------------------------------------------
    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # A separate student lets the teacher load straight in its compute dtype (half the memory
    # of a float32 load for a bf16 run); a student cut from the teacher copies float32 weights.
    teacher, resolved = load_model(config.teacher, dtype=teacher_dtype if config.student else None)
    tokenizer = load_tokenizer(resolved)
    teacher_id = teacher_fingerprint(resolved.path) if Path(resolved.path).is_dir() else resolved.path
    n_teacher = len(decoder_layers(teacher))
    config = config.resolved(n_teacher)  # a share student_layers -> its count (hashed as such)

    keep: list[int] | None = None
    plan_pairs: list[list[int]] = []
    student_tokenizer = tokenizer
    # Without teacher logits (--kd-weight 0, no anchoring: e.g. sequence-level KD) the student may
    # have any tokenizer; the teacher then only writes the data.
    ce_only_other_vocab = False
    if config.student:
        student, s_resolved = load_model(config.student)
        student_tokenizer = load_tokenizer(s_resolved)
        if config.cross_tokenizer == "none":
            if config.kd_weight > 0 or config.anchor_weight > 0:
                check_same_vocab(teacher, tokenizer, student, student_tokenizer, config.student)
            else:
                ce_only_other_vocab = not same_vocab(teacher, tokenizer, student, student_tokenizer)
        student_desc = f"{config.student}"
    else:
        pruned = pruned_student(
            teacher, teacher_name=config.teacher, plan=config.plan, student_layers=config.student_layers
        )
        student, keep, plan_pairs, student_desc = (
            pruned.model,
            pruned.keep_layers,
            pruned.anchor_pairs,
            pruned.description,
        )
    student.float()
    n_student = len(decoder_layers(student))

    anchoring = None
    if config.anchor_weight > 0:
        pairs = config.anchor_pairs or plan_pairs or default_anchor_pairs(n_student, n_teacher, keep)
        check_anchor_pairs(pairs, n_student, n_teacher)
        torch.manual_seed(config.seed)
        anchoring = ActivationAnchoringLoss(
            pairs,
            student_hidden=student.config.hidden_size,
            teacher_hidden=teacher.config.hidden_size,
            metric=config.anchor_metric,
            normalize=config.anchor_normalize,
        )
    teacher_layers = anchoring.teacher_layers if anchoring is not None else []

    # -- setup data --------------------------------------------------------------------
    if not dist.is_main:  # rank 0 tokenizes (and caches) first; the others then read its cache
        dist.barrier()
    corpus = build_corpus(
        config.data,
        student_tokenizer,
        seq_len=config.seq_len,
        loss_on=config.loss_on,
        heldout_fraction=config.heldout_fraction,
        seed=config.seed,
        max_examples=config.max_examples,
        cache_dir=config.data_cache_dir or out.parent / "data_cache",
        teacher=teacher,
        teacher_id=teacher_id,
        teacher_tokenizer=tokenizer,
        seq_kd=config.seq_kd,
    )
    if dist.is_main:
        dist.barrier()
        log.info(
            "data: %d train rows, %d held-out rows of %d tokens (%s)",
            len(corpus.train),
            len(corpus.heldout) if corpus.heldout is not None else 0,
            config.seq_len,
            corpus.directory,
        )

    # -- setup teacher: the top-k cache (built once) or the live model --------------------
    cache_info = None
    cross_kd = None
    if (
        config.cache_teacher
        or config.teacher_cache_dir
        and (Path(config.teacher_cache_dir) / "meta.json").is_file()
    ):
        root = Path(config.teacher_cache_dir) if config.teacher_cache_dir else out.parent / "teacher_cache"
        # k at or above the vocabulary keeps every logit (the exact KL): a small model's whole vocabulary.
        topk = min(config.topk, teacher.get_output_embeddings().weight.shape[0])
        key = cache_key(teacher_id, corpus.key, topk, config.temperature, teacher_layers)
        splits = {"train": corpus.train}
        if corpus.heldout is not None:
            splits["heldout"] = corpus.heldout
        cache, cache_info = prepare_teacher_cache(
            root if (root / "meta.json").is_file() else root / key,
            teacher,
            splits,
            teacher_id=teacher_id,
            data_key=corpus.key,
            k=topk,
            temperature=config.temperature,
            layers=teacher_layers,
            batch_size=config.micro_batch_size,
            device=device,
            dtype=teacher_dtype,
            dist=dist,
        )
        if cache_only:
            return {"teacher_cache": cache_info}
        teacher_source = cache.source("train")
        del teacher
    elif config.cross_tokenizer != "none":
        if cache_only:
            raise NexusError("cache_only needs cache_teacher (--cache-teacher)")
        # The teacher reads its own tokenisation of each row's text, in the extra_loss hook.
        cross_kd = CrossTokenizerKD(
            config.cross_tokenizer,
            student=student,
            teacher=teacher,
            student_tokenizer=student_tokenizer,
            teacher_tokenizer=tokenizer,
            kd_weight=config.kd_weight,
            temperature=config.temperature,
            teacher_dtype=teacher_dtype,
        )
        teacher_source = None
    elif ce_only_other_vocab:
        teacher_source = None
        del teacher
    else:
        if cache_only:
            raise NexusError("cache_only needs cache_teacher (--cache-teacher)")
        # Cast here (on the CPU), place in the trainer: whole on this process's device, or sharded.
        teacher_source = LiveTeacherSource(teacher, layers=teacher_layers, dtype=teacher_dtype)

    onpolicy = _onpolicy_batches(config, corpus.train, student, student_tokenizer, precision)

    # -- fit ---------------------------------------------------------------------------
    trainer = Trainer.for_phase(
        config,
        student,
        tokenizer=student_tokenizer,
        train=corpus.train,
        heldout=corpus.heldout,
        teacher=teacher_source,
        out_dir=out,
        anchoring=anchoring,
        anchor_weight=config.anchor_weight,
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=2,
        dist=dist,
        extra_loss=cross_kd,
        onpolicy=onpolicy,
        save_dtype=student_save_dtype(resolved),
    )
    summary = trainer.fit()
    if onpolicy is not None:
        summary["onpolicy"] = {
            "lmbda": config.lmbda,
            "steps": onpolicy.count_onpolicy(summary["step"]),
            "prompts": len(onpolicy.prompts),
            "max_new_tokens": config.onpolicy_max_new_tokens,
            "temperature": config.onpolicy_temperature,
        }

    # -- save --------------------------------------------------------------------------
    summary.update(
        {
            "teacher": config.teacher,
            "student": student_desc,
            "student_layers": n_student,
            "keep_layers": keep,
            "anchor_pairs": anchoring.pairs if anchoring is not None else None,
            "precision": precision,
            "teacher_cache": cache_info,
            "cross_tokenizer": config.cross_tokenizer,
            "seq_kd": config.seq_kd,
            "out": str(out),
            "world_size": dist.world,
        }
    )
    if dist.is_main:
        atomic_write_json(out / "summary.json", summary)
    return summary


def _onpolicy_batches(config: DistillConfig, train, student, tokenizer, precision: str):
    """The on-policy batch builder of a run with ``lmbda > 0`` (None otherwise): prompts cut
    from the training rows, the student's pad and end-of-sequence ids."""
    if config.lmbda <= 0:
        return None
    from nexus.trainer.onpolicy import OnPolicyBatches, OnPolicySettings, prompts_from_rows

    prompts = prompts_from_rows(
        train,
        tokenizer,
        prompt_tokens=config.onpolicy_prompt_tokens,
        max_prompt_len=config.seq_len - config.onpolicy_max_new_tokens,
    )
    eos = student.generation_config.eos_token_id if student.generation_config is not None else None
    eos_ids = {*([eos] if isinstance(eos, int) else eos or []), tokenizer.eos_token_id} - {None}
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    log.info("on-policy: lmbda %.2f, %d prompts from the training rows", config.lmbda, len(prompts))
    return OnPolicyBatches(
        prompts,
        OnPolicySettings(
            lmbda=config.lmbda,
            max_new_tokens=config.onpolicy_max_new_tokens,
            temperature=config.onpolicy_temperature,
            seed=config.seed,
        ),
        pad_id=pad,
        eos_ids=sorted(eos_ids),
        precision=precision,
    )
