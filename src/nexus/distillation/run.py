"""``run_distill``: phase 2 from a :class:`DistillConfig`, top to bottom.

setup (teacher, student, data, teacher cache) -> :class:`DistillLoop.fit` (resumes) -> OUT/model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from nexus.config import config_hash, to_dict
from nexus.distillation.config import NON_RESULT_FIELDS, DistillConfig
from nexus.distillation.losses import ActivationAnchoringLoss
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter

log = logging.getLogger(__name__)


def evenly_spread_layers(num_layers: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``0..num_layers-1``, first and last included."""
    if not 1 <= keep <= num_layers:
        raise NexusError(
            f"student_layers must be between 1 and the teacher's {num_layers} layers, got {keep}"
        )
    if keep == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def read_plan(path: str | Path) -> dict[str, Any]:
    """The few keys of a ``student_plan.json`` this phase uses (keep_layers, anchor_pairs)."""
    path = Path(path)
    if not path.is_file():
        raise NexusError(f"student plan not found: {path}")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NexusError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("keep_layers"), list):
        raise NexusError(f"{path}: a student plan needs a 'keep_layers' list")
    pairs = plan.get("anchor_pairs") or []
    if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        raise NexusError(f"{path}: 'anchor_pairs' must be a list of [student_layer, teacher_layer]")
    return {"keep_layers": plan["keep_layers"], "anchor_pairs": [list(map(int, p)) for p in pairs]}


def default_anchor_pairs(
    student_layers: int, teacher_layers: int, keep: list[int] | None, n_pairs: int = 4
) -> list[list[int]]:
    """``n_pairs`` student layers spread over the depth, each with its teacher counterpart
    (the layer it was copied from, else the same relative depth)."""
    chosen = evenly_spread_layers(student_layers, min(n_pairs, student_layers))
    if keep is not None:
        return [[s, keep[s]] for s in chosen]
    return [[s, round((s + 1) * teacher_layers / student_layers) - 1] for s in chosen]


def result_hash(cfg: DistillConfig) -> str:
    """Hash of the config fields that change the trained weights (resume refuses a mismatch)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in NON_RESULT_FIELDS}
    return config_hash(data)


def _check_same_vocab(teacher, teacher_tok, student, student_tok, student_spec: str) -> None:
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise NexusError(
            f"teacher and student {student_spec} have different vocabularies ({t_vocab} vs {s_vocab} tokens or "
            "different token ids); cross-tokenizer distillation is not supported: pick a student of the teacher's family"
        )


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
    from nexus.distillation.cache import TeacherCache, build_teacher_cache, cache_key, teacher_fingerprint
    from nexus.distillation.loop import DistContext, DistillLoop, LiveTeacherSource, LoopSettings
    from nexus.distillation.parallel import resolve_parallelism
    from nexus.hardware import pick_device, resolve_precision
    from nexus.models import build_student, decoder_layers, load_model, load_tokenizer

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "distill"
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    dist = DistContext.from_env(device)
    # A bad parallel setup fails here, before any model is loaded (the loop resolves it again).
    resolve_parallelism(config.distributed, config.teacher_sharding, dist.world)
    torch.manual_seed(config.seed)

    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # A separate student lets the teacher load straight in its compute dtype (half the memory
    # of a float32 load for a bf16 run); a student cut from the teacher copies float32 weights.
    teacher, resolved = load_model(config.teacher, dtype=teacher_dtype if config.student else None)
    tokenizer = load_tokenizer(resolved)
    teacher_id = teacher_fingerprint(resolved.path) if Path(resolved.path).is_dir() else resolved.path
    n_teacher = len(decoder_layers(teacher))

    keep: list[int] | None = None
    plan_pairs: list[list[int]] = []
    if config.student:
        student, s_resolved = load_model(config.student)
        _check_same_vocab(teacher, tokenizer, student, load_tokenizer(s_resolved), config.student)
        student_desc = f"{config.student}"
    else:
        if config.plan:
            plan = read_plan(config.plan)
            keep, plan_pairs = plan["keep_layers"], plan["anchor_pairs"]
            student_desc = f"plan {config.plan}: {len(keep)} of {n_teacher} layers"
        else:
            keep = evenly_spread_layers(n_teacher, config.student_layers)
            student_desc = f"{len(keep)} of {n_teacher} teacher layers, evenly spread"
        student = build_student(teacher, keep, teacher_name=config.teacher)
    student.float()
    n_student = len(decoder_layers(student))

    anchoring = None
    if config.anchor_weight > 0:
        pairs = config.anchor_pairs or plan_pairs or default_anchor_pairs(n_student, n_teacher, keep)
        for s_layer, t_layer in pairs:
            if not (0 <= s_layer < n_student and 0 <= t_layer < n_teacher):
                raise NexusError(
                    f"anchor pair [{s_layer}, {t_layer}] is out of range (student 0..{n_student - 1}, teacher 0..{n_teacher - 1})"
                )
        torch.manual_seed(config.seed)
        anchoring = ActivationAnchoringLoss(
            pairs,
            student_hidden=student.config.hidden_size,
            teacher_hidden=teacher.config.hidden_size,
            metric=config.anchor_metric,
            normalize=config.anchor_normalize,
        )
    teacher_layers = anchoring.teacher_layers if anchoring is not None else []

    if not dist.is_main:  # rank 0 tokenizes (and caches) first; the others then read its cache
        dist.barrier()
    corpus = build_corpus(
        config.data,
        tokenizer,
        seq_len=config.seq_len,
        loss_on=config.loss_on,
        heldout_fraction=config.heldout_fraction,
        seed=config.seed,
        max_examples=config.max_examples,
        cache_dir=config.data_cache_dir or out.parent / "data_cache",
        teacher=teacher,
        teacher_id=teacher_id,
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

    cache_info = None
    if (
        config.cache_teacher
        or config.teacher_cache_dir
        and (Path(config.teacher_cache_dir) / "meta.json").is_file()
    ):
        root = Path(config.teacher_cache_dir) if config.teacher_cache_dir else out.parent / "teacher_cache"
        # k at or above the vocabulary keeps every logit (the exact KL): a small model's whole vocabulary.
        topk = min(config.topk, teacher.get_output_embeddings().weight.shape[0])
        key = cache_key(teacher_id, corpus.key, topk, config.temperature, teacher_layers)
        directory = root if (root / "meta.json").is_file() else root / key
        cache = TeacherCache(directory)
        if not cache.complete:
            if not dist.is_main:
                dist.barrier()
            else:
                splits = {"train": corpus.train}
                if corpus.heldout is not None:
                    splits["heldout"] = corpus.heldout
                teacher.to(device)
                import time

                t0 = time.perf_counter()
                build_teacher_cache(
                    directory,
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
                )
                cache_info = {"build_seconds": round(time.perf_counter() - t0, 2)}
                dist.barrier()
        cache.check(
            teacher_id=teacher_id,
            data_key=corpus.key,
            k=topk,
            temperature=config.temperature,
            layers=teacher_layers,
        )
        cache_info = {**(cache_info or {}), "dir": str(directory)}
        if cache_only:
            return {"teacher_cache": cache_info}
        teacher_source = cache.source("train")
        del teacher
    else:
        if cache_only:
            raise NexusError("cache_only needs cache_teacher (--cache-teacher)")
        # Cast here (on the CPU), place in the loop: whole on this process's device, or sharded.
        teacher_source = LiveTeacherSource(teacher, layers=teacher_layers, dtype=teacher_dtype)

    settings = LoopSettings.from_config(config)
    loop = DistillLoop(
        student,
        tokenizer=tokenizer,
        train=corpus.train,
        heldout=corpus.heldout,
        teacher=teacher_source,
        settings=settings,
        out_dir=out,
        run_config=config,
        result_hash=result_hash(config),
        anchoring=anchoring,
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=2,
        dist=dist,
    )
    summary = loop.fit()
    summary.update(
        {
            "teacher": config.teacher,
            "student": student_desc,
            "student_layers": n_student,
            "keep_layers": keep,
            "anchor_pairs": anchoring.pairs if anchoring is not None else None,
            "precision": precision,
            "teacher_cache": cache_info,
            "out": str(out),
            "world_size": dist.world,
        }
    )
    if dist.is_main:
        from nexus.utils import atomic_write_json

        atomic_write_json(out / "summary.json", summary)
    return summary


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(DistillConfig)]
