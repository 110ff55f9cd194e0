"""Phase 1, NIWT: perturb each layer, measure which capability it costs, plan the student.

Public API (imported lazily, so ``nexus --help`` stays fast):

* :func:`run_profile` (``nexus profile``): ``ProfileConfig`` -> results/profile/<name>.json/.csv/.png;
* :func:`load_profile`, :func:`make_plan` / :func:`plan_from_profile` / :func:`load_plan` /
  :func:`save_plan` (``student_plan.json``), :func:`alignment`, :func:`plot_heatmap`;
* :func:`profile_model` / :func:`evaluate_model` on an already loaded model and probe sets.
"""

from __future__ import annotations

from nexus.utils import lazy_exports

_EXPORTS = {
    "ProfileConfig": "nexus.profiling.config",
    "PlanConfig": "nexus.profiling.config",
    "run_profile": "nexus.profiling.phase",
    "load_profile": "nexus.profiling.phase",
    "plan_from_profile": "nexus.profiling.phase",
    "make_plan": "nexus.profiling.plan",
    "load_plan": "nexus.profiling.plan",
    "save_plan": "nexus.profiling.plan",
    "alignment": "nexus.profiling.alignment",
    "plot_heatmap": "nexus.profiling.heatmap",
    "profile_model": "nexus.profiling.profiler",
    "evaluate_model": "nexus.profiling.profiler",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
