"""Phase 2, distillation: logit KD + ActivationAnchoringLoss from a teacher into a smaller student.

* :mod:`nexus.distillation.config` -- :class:`DistillConfig` (the ``distill:`` section: models,
  data, anchoring, teacher cache, and the engine's :class:`~nexus.trainer.settings.TrainSettings`);
* :mod:`nexus.distillation.student` -- the student's layers (plan or evenly spread) and the
  anchored layer pairs;
* :mod:`nexus.distillation.run` -- :func:`run_distill`, the phase's recipe (setup models ->
  setup data -> setup teacher -> fit -> save);
* :mod:`nexus.distillation.cli` -- ``nexus distill``.

The losses, the teacher cache, the loop, checkpoints and parallelism are the shared engine's,
:mod:`nexus.trainer`.
"""

from nexus.distillation.config import DistillConfig

__all__ = ["DistillConfig", "run_distill"]


def run_distill(config, **kwargs):
    """See :func:`nexus.distillation.run.run_distill` (imported lazily: it pulls in transformers)."""
    from nexus.distillation.run import run_distill as _run

    return _run(config, **kwargs)
