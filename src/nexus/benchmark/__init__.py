"""Phase 5's benchmark: teacher vs student, head to head (usage guide section 3).

* :func:`run_benchmark` / :class:`BenchmarkConfig` -- the entry point the CLI and the release
  phase call; returns the summary (teacher/student accuracy, gap, per-task figures);
* :func:`render_summary_table` -- the markdown table for a model card;
* :func:`fidelity_metrics` -- mean KL(teacher || student) per token and top-1 agreement;
* :mod:`nexus.benchmark.tasks` (task kinds and sources), :mod:`nexus.benchmark.scoring` (the
  scoring rules), :mod:`nexus.benchmark.sandbox` (confined execution of generated code),
  :mod:`nexus.benchmark.stats` (McNemar, bootstrap CI, agreement).
"""

__all__ = ["BenchmarkConfig", "Fidelity", "fidelity_metrics", "render_summary_table", "run_benchmark"]

_LAZY = {
    "BenchmarkConfig": "nexus.benchmark.runner",
    "run_benchmark": "nexus.benchmark.runner",
    "Fidelity": "nexus.benchmark.fidelity",
    "fidelity_metrics": "nexus.benchmark.fidelity",
    "render_summary_table": "nexus.benchmark.report",
}


def __getattr__(name: str):
    # Imported on first use so that `nexus --help` does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
