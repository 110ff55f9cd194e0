"""Optional bridge: run lm-evaluation-harness tasks on both models (extra ``lm-eval``).

The already-loaded models are wrapped in lm-eval's ``HFLM`` (no second load); results are the
harness's own numeric metrics per task (``acc,none``, ``acc_norm,none``, ...).
"""

from __future__ import annotations

from typing import Any

from nexus.errors import NexusError


def run_lm_eval(
    lm, tasks: list[str], *, limit: int | None, batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` for one :class:`~nexus.benchmark.scoring.LoadedModel`."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise NexusError(
            "--lm-eval-tasks needs lm-evaluation-harness: pip install 'nexus-distill[lm-eval]' (or lm-eval)"
        ) from None
    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, device=str(lm.device))
    try:
        out: dict[str, Any] = simple_evaluate(model=model, tasks=list(tasks), limit=limit, log_samples=False)
    except (KeyError, ValueError) as exc:
        raise NexusError(f"lm-eval could not run {', '.join(tasks)}: {str(exc).splitlines()[0]}") from None
    return {
        task: {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for task, metrics in (out or {}).get("results", {}).items()
    }
