"""Phase 5's benchmark: teacher vs student, head to head (usage guide section 3).

* :func:`run_benchmark` / :class:`BenchmarkConfig` -- the entry point the CLI and the release
  phase call; returns the summary (teacher/student accuracy, gap, per-task figures);
* :func:`render_summary_table` -- the markdown table for a model card;
* :func:`fidelity_metrics` -- mean KL(teacher || student) per token and top-1 agreement;
* :mod:`nexus.benchmark.tasks` (task kinds and sources), :mod:`nexus.benchmark.scoring` (the
  scoring rules), :mod:`nexus.benchmark.sandbox` (confined execution of generated code),
  :mod:`nexus.benchmark.stats` (McNemar, bootstrap CI, agreement).
"""

from nexus.utils import lazy_exports

__all__ = ["BenchmarkConfig", "Fidelity", "fidelity_metrics", "render_summary_table", "run_benchmark"]

_LAZY = {
    "BenchmarkConfig": "nexus.benchmark.runner",
    "run_benchmark": "nexus.benchmark.runner",
    "Fidelity": "nexus.trainer.evaluate",
    "fidelity_metrics": "nexus.trainer.evaluate",
    "render_summary_table": "nexus.benchmark.report",
}


__getattr__ = lazy_exports(__name__, _LAZY)  # first use imports torch, not `nexus --help`
