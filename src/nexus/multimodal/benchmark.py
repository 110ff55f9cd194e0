"""Teacher vs student on image questions (``nexus benchmark`` / ``scripts/benchmark_suite.py``
with a vision-language student): multiple choice by log-likelihood, short answers by exact
match, the usage guide's console summary and ``results/benchmark_comparison.md`` (one row per
question, naming its image)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nexus.multimodal.data import SYNTHETIC, accuracy_examples


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def console_summary(teacher: dict[str, Any], student: dict[str, Any]) -> str:
    """The guide's three lines (exact match, the headline) plus the multiple-choice figures."""
    lines = []
    for name, metric in (("", "exact_match"), (" (multiple choice)", "multiple_choice")):
        t, s = teacher[metric], student[metric]
        if t is None or s is None:
            continue
        lines += [
            f"Teacher{name}: {_pct(t)}",
            f"Student{name}: {_pct(s)}",
            f"Gap{name}: {100 * (s - t):+.2f}%",
        ]
    return "\n".join(lines)


def run_vision_benchmark(
    *,
    student: str,
    teacher: str | None,
    limit: int | None,
    data: str | None,
    out: Path,
    seed: int = 0,
    image_size: int = 64,
) -> dict[str, Any]:
    from nexus.multimodal.release import comparison_report
    from nexus.multimodal.vlm import evaluate_accuracy, load_vlm
    from nexus.utils import atomic_write_json, atomic_write_text

    settings = SimpleNamespace(
        data=data or SYNTHETIC, eval_rows=limit or 50, seed=seed, image_size=image_size
    )
    examples = accuracy_examples(settings)
    results: dict[str, Any] = {}
    for role, spec in (("teacher", teacher or "default"), ("student", student)):
        model, processor, path = load_vlm(spec)
        started = time.perf_counter()
        results[role] = evaluate_accuracy(model, processor, examples)
        results[role]["seconds"] = round(time.perf_counter() - started, 2)
        results[role]["path"] = path
        del model
    out.mkdir(parents=True, exist_ok=True)
    report = out / "benchmark_comparison.md"
    atomic_write_text(
        report,
        "# Teacher vs student on image questions\n\n"
        + comparison_report(results["teacher"], results["student"]),
    )
    summary = {
        "console": console_summary(results["teacher"], results["student"]),
        "report_md": str(report),
        "results_json": str(out / "benchmark_results.json"),
        "data": settings.data,
        "items": len(examples),
    }
    atomic_write_json(
        out / "benchmark_results.json",
        {
            **{k: v for k, v in summary.items() if k != "console"},
            "teacher": results["teacher"],
            "student": results["student"],
        },
    )
    return summary
