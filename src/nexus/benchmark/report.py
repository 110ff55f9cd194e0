"""Reports of a benchmark run, all rendered from the one results mapping:

* the console summary (the usage guide's three lines, then a per-task table);
* ``benchmark_comparison.md``: the summary table, then per task the side-by-side rows
  ``| Question | Teacher Output | Student Output | Correct? |`` (long text shortened; the full
  text is in the JSON);
* ``benchmark_results.json``: every item's prompt, outputs, extracted answers, correctness and
  timings;
* :func:`render_summary_table`: the markdown table for a release's model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nexus.utils import atomic_write_json, atomic_write_text

RESULTS_JSON = "benchmark_results.json"
REPORT_MD = "benchmark_comparison.md"
CELL_CHARS = 120


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def signed_pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def verdict(teacher_correct: bool, student_correct: bool) -> str:
    """The "Correct?" cell: which of the two models were right."""
    if teacher_correct and student_correct:
        return "✅ both"
    if teacher_correct:
        return "Teacher ✅ · Student ❌"
    if student_correct:
        return "Teacher ❌ · Student ✅"
    return "❌ neither"


def cell(text: str | None, limit: int = CELL_CHARS) -> str:
    """One markdown table cell: one line, pipes escaped, shortened to ``limit`` characters."""
    text = " ".join((text or "").split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|") or "(empty)"


def console_summary(results: dict[str, Any]) -> str:
    """``Teacher: 82.00%`` / ``Student: 79.50%`` / ``Gap: -2.50%``, then the per-task table."""
    o = results["overall"]
    lines = [
        f"Teacher: {pct(o['teacher_accuracy'])}",
        f"Student: {pct(o['student_accuracy'])}",
        f"Gap: {signed_pct(o['gap'])}",
        "",
    ]
    header = f"{'task':<16} {'items':>5} {'teacher':>8} {'student':>8} {'gap':>8} {'95% CI of gap':>19} {'McNemar p':>9} {'agree':>6}"
    lines.append(header)
    lines.append("-" * len(header))
    for task in results["tasks"]:
        s = task["summary"]
        ci = f"[{signed_pct(s['gap_ci95'][0])}, {signed_pct(s['gap_ci95'][1])}]"
        lines.append(
            f"{s['name']:<16} {s['items']:>5} {pct(s['teacher_accuracy']):>8} {pct(s['student_accuracy']):>8} "
            f"{signed_pct(s['gap']):>8} {ci:>19} {s['mcnemar_p']:>9.3g} {pct(s['agreement']):>6}"
        )
    lines += integrity_lines(results)
    fid = results.get("fidelity") or {}
    if "kl_teacher_student" in fid:
        lines.append(
            f"\nFidelity: KL(teacher||student) {fid['kl_teacher_student']:.4f} nats/token, "
            f"top-1 agreement {pct(fid['top1_agreement'])} over {fid['tokens']} tokens"
        )
    elif fid.get("skipped"):
        lines.append(f"\nFidelity: skipped ({fid['skipped']})")
    for role in ("teacher", "student"):
        m = results["models"][role]
        tps = m["generation_tokens_per_s"]
        lines.append(
            f"{role.capitalize()}: {m['parameters'] / 1e6:.1f}M params, "
            f"{f'{tps:.1f} tokens/s' if tps else 'no generation'}, latency p50 {m['latency_p50_s']:.3f}s "
            f"p95 {m['latency_p95_s']:.3f}s, peak memory {m['peak_memory_mb']:.0f} MB"
        )
    return "\n".join(lines)


def integrity_lines(results: dict[str, Any]) -> list[str]:
    """What the figures are worth: tasks where the teacher is near chance, and each task's
    overlap with the student's training data (13-gram) with the scores on clean items only."""
    tasks = [t["summary"] for t in results["tasks"]]
    lines = []
    weak = [s for s in tasks if s.get("teacher_near_chance")]
    if weak:
        lines.append(
            "\nTeacher near chance (these tasks cannot show what the student kept): "
            + ", ".join(
                f"{s['name']} (teacher {pct(s['teacher_accuracy'])}, chance {pct(s['chance'])})" for s in weak
            )
        )
    dec = results.get("decontamination") or {}
    if not dec:
        return lines
    if not dec.get("checked"):
        lines.append(
            f"\nTraining-data overlap ({dec.get('ngram', 13)}-gram): not checked: {dec.get('reason')}"
        )
        return lines
    lines.append(
        f"\nTraining-data overlap ({dec['ngram']}-gram, {len(dec['sources'])} sources from {dec['record']}):"
    )
    for s in tasks:
        o = s.get("overlap")
        if o is None:
            continue
        clean = (
            f"clean items: teacher {pct(o['teacher_accuracy_clean'])}, student {pct(o['student_accuracy_clean'])}"
            if o["clean_items"]
            else "no clean items"
        )
        lines.append(f"  {s['name']}: {o['dirty_items']}/{s['items']} items in the training data; {clean}")
    for source in dec.get("unchecked") or []:
        lines.append(f"  not checked: {source}")
    return lines


def render_summary_table(summary_or_results: dict[str, Any]) -> str:
    """The markdown summary table (per task + overall), for the report and a model card.

    Accepts the full results mapping or the summary that :func:`summary_of` returns.
    """
    tasks = (
        [t["summary"] for t in summary_or_results["tasks"]]
        if "overall" in summary_or_results
        else summary_or_results["per_task"]
    )
    overall = summary_or_results.get("overall") or summary_or_results
    rows = [
        "| Task | Scoring | Items | Teacher | Student | Gap | 95% CI of gap | McNemar p | Agreement |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | :--- | ---: | ---: |",
    ]

    def row(name: str, scoring: str, s: dict[str, Any]) -> str:
        lo, hi = s["gap_ci95"]
        return (
            f"| {name} | {scoring} | {s['items']} | {pct(s['teacher_accuracy'])} | {pct(s['student_accuracy'])} | "
            f"{signed_pct(s['gap'])} | [{signed_pct(lo)}, {signed_pct(hi)}] | {s['mcnemar_p']:.3g} | {pct(s['agreement'])} |"
        )

    for s in tasks:
        rows.append(row(s["name"], s["scoring"], s))
    rows.append(row("**Overall**", "all items", overall))
    return "\n".join(rows) + "\n"


def _output_of(task: dict[str, Any], record: dict[str, Any]) -> str:
    text = record.get("output", "")
    if "extracted" in record:
        text = f"{text} → {record['extracted']}"
    if record.get("sandbox") and record["sandbox"] != "passed":
        text = f"{text} [{record['sandbox']}]"
    return text


def render_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    models = results["models"]
    parts = [
        "# Benchmark: teacher vs student\n",
        f"Teacher: `{cfg['teacher']}` ({models['teacher']['parameters'] / 1e6:.1f}M parameters)  ",
        f"Student: `{cfg['student']}` ({models['student']['parameters'] / 1e6:.1f}M parameters)  ",
        f"Items per task: {cfg['limit'] or 'all'} (seed {cfg['seed']}); gap = student - teacher.\n",
        "## Summary\n",
        render_summary_table(results),
    ]
    fid = results.get("fidelity") or {}
    if "kl_teacher_student" in fid:
        parts.append(
            f"Fidelity on {fid['texts']} held-out texts ({fid['tokens']} tokens): mean KL(teacher‖student) "
            f"{fid['kl_teacher_student']:.4f} nats/token, top-1 agreement {pct(fid['top1_agreement'])}.\n"
        )
    elif fid.get("skipped"):
        parts.append(f"Fidelity metrics skipped: {fid['skipped']}.\n")
    checks = integrity_lines(results)
    if checks:
        parts.append("## Integrity checks\n")
        parts.append("```text\n" + "\n".join(line.strip("\n") for line in checks) + "\n```\n")
    parts.append("| Model | Parameters | Tokens/s (generation) | Latency p50 | Latency p95 | Peak memory |")
    parts.append("| :--- | ---: | ---: | ---: | ---: | ---: |")
    for role in ("teacher", "student"):
        m = models[role]
        tps = f"{m['generation_tokens_per_s']:.1f}" if m["generation_tokens_per_s"] else "-"
        parts.append(
            f"| {role} | {m['parameters']:,} | {tps} | {m['latency_p50_s']:.3f} s | {m['latency_p95_s']:.3f} s | "
            f"{m['peak_memory_mb']:.0f} MB |"
        )
    parts.append("")
    if results.get("lm_eval"):
        parts.append("## lm-evaluation-harness\n")
        parts.append("| Task | Metric | Teacher | Student |")
        parts.append("| :--- | :--- | ---: | ---: |")
        teacher, student = results["lm_eval"]["teacher"], results["lm_eval"]["student"]
        for task, metrics in teacher.items():
            for metric, value in metrics.items():
                other = student.get(task, {}).get(metric)
                parts.append(
                    f"| {task} | {metric} | {value:.4f} | {'-' if other is None else f'{other:.4f}'} |"
                )
        parts.append("")
    for task in results["tasks"]:
        s = task["summary"]
        parts.append(f"## {s['name']} ({s['kind']}, {s['scoring']})\n")
        parts.append(
            f"Teacher {pct(s['teacher_accuracy'])}, student {pct(s['student_accuracy'])}, gap {signed_pct(s['gap'])}"
            + (
                f"; acc_norm teacher {pct(s['teacher_accuracy_norm'])}, student {pct(s['student_accuracy_norm'])}"
                if "teacher_accuracy_norm" in s
                else ""
            )
            + ".\n"
        )
        parts.append("| Question | Teacher Output | Student Output | Correct? |")
        parts.append("| :--- | :--- | :--- | :--- |")
        for item in task["items"]:
            t, st = item["teacher"], item["student"]
            parts.append(
                f"| {cell(item['question'])} | {cell(_output_of(task, t))} | {cell(_output_of(task, st))} | "
                f"{verdict(t['correct'], st['correct'])} |"
            )
        parts.append("")
    parts.append(f"Full prompts, outputs and timings: `{RESULTS_JSON}`.\n")
    return "\n".join(parts)


def write_reports(results: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    results_dir = Path(results_dir)
    json_path, md_path = results_dir / RESULTS_JSON, results_dir / REPORT_MD
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render_markdown(results))
    return json_path, md_path


def summary_of(results: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """The short summary ``run_benchmark`` returns (what the pipeline and model card need)."""
    o = results["overall"]
    return {
        "teacher_accuracy": o["teacher_accuracy"],
        "student_accuracy": o["student_accuracy"],
        "gap": o["gap"],
        "gap_ci95": o["gap_ci95"],
        "mcnemar_p": o["mcnemar_p"],
        "agreement": o["agreement"],
        "items": o["items"],
        "per_task": [t["summary"] for t in results["tasks"]],
        "fidelity": results["fidelity"],
        "models": results["models"],
        "stopped": results["stopped"],
        "console": console_summary(results),
        "results_json": str(Path(results_dir) / RESULTS_JSON),
        "report_md": str(Path(results_dir) / REPORT_MD),
    }
