"""Phase 4 for a vision-language student: experts in the language tower, on the text router's code.

Phase 3's student (a ``LlavaForConditionalGeneration`` with a Llama language tower, say) gets
its language tower turned into a transformers MoE by :func:`nexus.router.run.upcycle` (copy
upcycling by default: every expert is the dense MLP, so the routed model is exactly the dense
one at step 0; the routers start as a classifier of the rows' capability, expert ``i`` <-
capability ``i``, when there are at least as many experts as capabilities). The result is the
same VLM class with a ``MixtralConfig`` (or ``Qwen2MoeConfig``) as its ``text_config``, which
``AutoModelForImageTextToText`` loads with no Nexus code. :func:`nexus.router.run.train_router`
then trains it like the text router: KD from the teacher, which sees the same pictures, on the
answer tokens, plus load balancing, z-loss and ``beta_entropy``; routing reports per capability
(``routing.md``, ``routing.json``, ``routing_load.png``); checkpoints, resume, pause/stop. The
vision tower and projector stay frozen unless ``train_vision`` / ``train_projector``. At the end
the routed student's held-out accuracy is measured; the release compares it with the dense one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from nexus.config import save_resolved
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter
from nexus.multimodal.config import VisionRouterConfig
from nexus.multimodal.rows import VisionRows


class RouterRows(NamedTuple):
    """The rows :func:`nexus.router.run.upcycle` and ``train_router`` read (``train`` also
    calibrates the routers)."""

    train: VisionRows
    heldout: VisionRows | None


def router_rows(config: VisionRouterConfig, processor) -> RouterRows:
    """The training and held-out rows with their capabilities as router domains (sorted)."""
    from nexus.multimodal.data import training_examples
    from nexus.multimodal.rows import encode_rows

    train, heldout = training_examples(config)
    domains = tuple(sorted({e.capability for e in train}))
    return RouterRows(
        encode_rows(processor, train, domains), encode_rows(processor, heldout, domains) if heldout else None
    )


def run_vision_router(
    config: VisionRouterConfig,
    *,
    results_dir: Path,
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Phase 4; writes ``<out>/model`` (routed student + processor), the routing reports,
    ``student_accuracy.json`` and ``summary.json``; returns the summary."""
    from nexus.hardware import pick_device
    from nexus.models import count_parameters
    from nexus.multimodal.train import freeze_vision, live_teacher, record_accuracy
    from nexus.multimodal.vlm import load_vlm
    from nexus.router.experts import dense_only_reason
    from nexus.router.run import MOE_MODEL_TYPES, keep_dense, train_router, upcycle
    from nexus.utils import atomic_write_json

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "mm_router"
    if not config.student:
        raise NexusError("the router phase needs a student: run the train phase first or set router.student")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    teacher, processor, _ = load_vlm(config.teacher)
    dense, _, _ = load_vlm(config.student)
    model_type = dense.config.get_text_config().model_type
    reason = dense_only_reason(model_type)
    if reason and model_type not in MOE_MODEL_TYPES:
        return keep_dense(config, out, results_dir, reason, printer)
    data = router_rows(config, processor)
    teacher_source = live_teacher(teacher, config, device, layers=[])
    model, dense_eval = upcycle(config, dense.float(), data, processor.tokenizer, teacher_source, device)
    del dense
    freeze_vision(model, config)
    summary = train_router(
        config,
        model,
        data=data,
        saver=processor,
        teacher_source=teacher_source,
        out=out,
        results_dir=results_dir,
        device=device,
        flags=flags,
        printer=printer,
    )
    summary.pop("is_main")
    record_accuracy(summary, model, processor, config, out)
    summary.update(
        {
            "teacher": config.teacher,
            "student": config.student,
            "dense_eval": dense_eval,
            "domains": list(data.train.domains),
            "student_parameters": count_parameters(model),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "out": str(out),
        }
    )
    atomic_write_json(out / "summary.json", summary)
    save_resolved(config, out)
    return summary
