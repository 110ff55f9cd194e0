"""The training engine under phases 2 (distill), 3 (train) and 4 (router).

A phase's recipe reads top to bottom -- setup models -> setup data -> setup teacher -> fit ->
save -- and takes everything else from here:

* :mod:`~nexus.trainer.settings` -- :class:`TrainSettings`, the one definition of the optimiser,
  schedule, loss, precision, parallelism and bookkeeping fields (each phase config is one);
* :mod:`~nexus.trainer.loop` -- :class:`Trainer`: ``fit`` (steps, evaluation, status and
  pause/stop, checkpoints and exact resume), returning the run's summary;
* :mod:`~nexus.trainer.step` -- the data order, the LR schedule and the step's loss module
  (KD + CE + anchoring + the phase's ``extra_loss(output, batch, step)`` hook);
* :mod:`~nexus.trainer.teacher` / :mod:`~nexus.trainer.cache` -- teacher sources behind one
  protocol: live, cached (memory-mapped top-k), or none;
* :mod:`~nexus.trainer.divergence` (KL / JSD / top-k bins / agreement),
  :mod:`~nexus.trainer.fused` (the chunked LM-head loss), :mod:`~nexus.trainer.anchoring`
  (:class:`ActivationAnchoringLoss`) -- the losses; :mod:`~nexus.trainer.evaluate` scores
  held-out rows with the same divergence functions; :mod:`~nexus.trainer.cross_tokenizer`
  (ULD and offset-aligned KD for a student with another tokenizer, as an ``extra_loss`` hook);
* :mod:`~nexus.trainer.parallel` (process group, DDP / FSDP2), :mod:`~nexus.trainer.checkpoint`
  (atomic checkpoint directories), :mod:`~nexus.trainer.metrics` (metrics.jsonl + TensorBoard);
* :mod:`~nexus.trainer.finetune` -- the config base and setup shared by phases 3 and 4.

No module here imports a phase package.
"""

from nexus.utils import lazy_exports

__all__ = [
    "ActivationAnchoringLoss",
    "LiveTeacherSource",
    "TrainSettings",
    "Trainer",
    "evaluate_fidelity",
]

# lazily: torch is not imported by `nexus --help`
__getattr__ = lazy_exports(
    __name__,
    {
        "ActivationAnchoringLoss": "nexus.trainer.anchoring",
        "LiveTeacherSource": "nexus.trainer.teacher",
        "TrainSettings": "nexus.trainer.settings",
        "Trainer": "nexus.trainer.loop",
        "evaluate_fidelity": "nexus.trainer.evaluate",
    },
)
