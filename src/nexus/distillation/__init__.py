"""Phase 2, distillation: logit KD + ActivationAnchoringLoss from a teacher into a smaller student.

* :mod:`nexus.distillation.losses` -- pure losses: forward/reverse KL, generalized JSD, top-k
  sparse KD with an explicit tail bin, CE, :class:`ActivationAnchoringLoss`, and the chunked
  (fused LM-head) loss that never holds ``B x T x V`` logits;
* :mod:`nexus.distillation.loop` -- :class:`DistillLoop`, the training loop reused by phases 3
  and 4 (AdamW, warm-up + cosine, accumulation, clipping, bf16 autocast, atomic checkpoints,
  exact resume, DDP via torchrun, eval, status/flags, metrics JSONL + TensorBoard); its module
  docstring documents the API (teacher sources, batches, ``extra_loss`` hook);
* :mod:`nexus.distillation.parallel` -- one process, DDP or FSDP2 for the student and the
  teacher, chosen by config or an ``accelerate launch`` FSDP config; full-state checkpoints;
* :mod:`nexus.distillation.cache` -- the memory-mapped top-k teacher cache;
* :mod:`nexus.distillation.run` -- :func:`run_distill`, the phase's entry point;
* :mod:`nexus.distillation.cli` -- ``nexus distill``.
"""

from nexus.distillation.config import DistillConfig
from nexus.utils import lazy_exports

__all__ = ["ActivationAnchoringLoss", "DistillConfig", "run_distill"]


# lazily: torch is not imported by `nexus --help`
__getattr__ = lazy_exports(__name__, {"ActivationAnchoringLoss": "nexus.distillation.losses"})


def run_distill(config, **kwargs):
    """See :func:`nexus.distillation.run.run_distill` (imported lazily: it pulls in transformers)."""
    from nexus.distillation.run import run_distill as _run

    return _run(config, **kwargs)
