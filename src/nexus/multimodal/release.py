"""Phase 5 for a vision-language student: the release directory, the accuracy and speed of
teacher and student on held-out image questions, the side-by-side report and the model card.

The student is the routed one (phase 4) only when its held-out accuracy (exact match and multiple
choice, on the release's questions) is at least the dense student's (phase 3 or 2), else the
dense one; the summary says which and why, in numbers.

``<release_dir>/`` (default ``nexus-vlm-release-v1/``) holds the student and its processor as
saved by transformers (``AutoModelForImageTextToText`` / ``AutoProcessor`` load it with no Nexus
code), ``sensitivity_heatmap.png`` (phase 1's), ``README.md`` (the model card: retention table
per capability, speed, how it was made) and ``nexus_manifest.json``. It is written atomically: a
killed release leaves the previous one whole.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from nexus.errors import NexusError
from nexus.multimodal.config import VisionReleaseConfig

log = logging.getLogger(__name__)

MANIFEST = "nexus_manifest.json"
HEATMAP = "sensitivity_heatmap.png"
REPORT = "multimodal_comparison.md"


def _timed_accuracy(model, processor, examples) -> tuple[dict[str, Any], float]:
    from nexus.multimodal.vlm import evaluate_accuracy

    t0 = time.perf_counter()
    result = evaluate_accuracy(model, processor, examples)
    return result, time.perf_counter() - t0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _scores(accuracy: dict[str, Any]) -> str:
    return f"{_pct(accuracy['exact_match'])} exact, {_pct(accuracy['multiple_choice'])} MC"


def at_least_as_good(routed: dict[str, Any], dense: dict[str, Any]) -> bool:
    """Routed accuracy >= dense on exact match and on multiple choice (a measure that either
    lacks, e.g. no multiple-choice rows, is not compared)."""
    return all(
        routed[m] >= dense[m]
        for m in ("exact_match", "multiple_choice")
        if routed[m] is not None and dense[m] is not None
    )


def choose_student(
    config: VisionReleaseConfig, examples
) -> tuple[Any, Any, Path, dict[str, Any], float, str]:
    """``(model, processor, directory, accuracy, evaluation seconds, reason)`` of the student to
    release: the routed one when :func:`at_least_as_good` as the dense one on ``examples``."""
    import json

    from nexus.multimodal.vlm import load_vlm

    if not config.student:
        raise NexusError("the release needs a student: run the earlier phases or set release.student")
    dense_dir = Path(config.student)
    if not (dense_dir / "config.json").is_file():
        raise NexusError(f"no student model at {dense_dir}: run the earlier phases first")
    dense, processor, _ = load_vlm(str(dense_dir))
    dense_acc, dense_seconds = _timed_accuracy(dense, processor, examples)
    if not config.routed:
        return dense, processor, dense_dir, dense_acc, dense_seconds, f"the dense student {dense_dir}"
    routed_dir = Path(config.routed)
    if not (routed_dir / "config.json").is_file():
        router_summary = routed_dir.parent / "summary.json"
        kept = json.loads(router_summary.read_text()).get("kept_dense") if router_summary.is_file() else None
        why = kept or f"no routed student at {routed_dir}"
        return dense, processor, dense_dir, dense_acc, dense_seconds, f"dense: {why}"
    routed, routed_processor, _ = load_vlm(str(routed_dir))
    routed_acc, routed_seconds = _timed_accuracy(routed, routed_processor, examples)
    numbers = f"held-out accuracy ({dense_acc['n']} questions): routed {_scores(routed_acc)} vs dense {_scores(dense_acc)}"
    if at_least_as_good(routed_acc, dense_acc):
        return (
            routed,
            routed_processor,
            routed_dir,
            routed_acc,
            routed_seconds,
            f"routed: {numbers} (not worse)",
        )
    return dense, processor, dense_dir, dense_acc, dense_seconds, f"dense: {numbers} (routed is worse)"


def comparison_report(teacher: dict[str, Any], student: dict[str, Any]) -> str:
    """Side-by-side Markdown: one row per question, naming its image."""
    lines = [
        "| Image | Question | Reference | Teacher Output | Student Output | Correct? |",
        "| :--- | :--- | :--- | :--- | :--- | :--- |",
    ]
    for t, s in zip(teacher["rows"], student["rows"], strict=True):

        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        mark = ("✅" if s["exact"] else "❌") + (
            " (MC ✅)" if s["choice_correct"] else " (MC ❌)" if s["choice_correct"] is not None else ""
        )
        lines.append(
            f"| {cell(t['image'])} | {cell(t['prompt'])} | {cell(t['reference'])} | {cell(t['answer'])} | "
            f"{cell(s['answer'])} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def retention_table(teacher: dict[str, Any], student: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cap, t in sorted(teacher["by_capability"].items()):
        s = student["by_capability"].get(cap, {})
        row = {"capability": cap, "n": t["n"]}
        for metric in ("multiple_choice", "exact_match"):
            tv, sv = t.get(metric), s.get(metric)
            row[f"teacher_{metric}"], row[f"student_{metric}"] = tv, sv
            row[f"retention_{metric}"] = (sv / tv) if tv else None
        rows.append(row)
    return rows


def model_card(summary: dict[str, Any], table: list[dict[str, Any]]) -> str:
    lines = [
        "# Nexus vision-language student",
        "",
        f"Distilled by Nexus from `{summary['teacher']}` ({summary['teacher_layers']} language layers) into a "
        f"{summary['student_layers']}-layer language tower; vision tower and projector copied from the teacher.",
        "",
        f"Released student: {summary['student_choice']}.",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        f'model = AutoModelForImageTextToText.from_pretrained("{summary["release_dir"]}")',
        f'processor = AutoProcessor.from_pretrained("{summary["release_dir"]}")',
        "```",
        "",
        f"## Held-out image questions ({summary['eval_rows']}, {summary['data']})",
        "",
        "Multiple choice: the choice with the highest log-likelihood; exact match: greedy answer.",
        "",
        "| Capability | N | Teacher MC | Student MC | Retention MC | Teacher exact | Student exact | Retention exact |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(
            f"| {r['capability']} | {r['n']} | {_pct(r['teacher_multiple_choice'])} | {_pct(r['student_multiple_choice'])} | "
            f"{_pct(r['retention_multiple_choice'])} | {_pct(r['teacher_exact_match'])} | {_pct(r['student_exact_match'])} | "
            f"{_pct(r['retention_exact_match'])} |"
        )
    t, s = summary["teacher_accuracy"], summary["student_accuracy"]
    lines += [
        f"| **all** | {t['n']} | {_pct(t['multiple_choice'])} | {_pct(s['multiple_choice'])} | "
        f"{_pct(summary['retention_multiple_choice'])} | {_pct(t['exact_match'])} | {_pct(s['exact_match'])} | "
        f"{_pct(summary['retention_exact_match'])} |",
        "",
        f"Evaluation wall time, same questions, one run: teacher {summary['teacher_seconds']:.1f} s, student "
        f"{summary['student_seconds']:.1f} s (student/teacher {summary['speed_ratio']:.2f}).",
        "",
        f"Parameters: teacher {summary['teacher_parameters']:,}, student {summary['student_parameters']:,}.",
        "",
    ]
    if summary.get("heatmap"):
        lines += ["## Layer sensitivity of the teacher's language tower", "", f"![heatmap]({HEATMAP})", ""]
    return "\n".join(lines)


def run_vision_release(
    config: VisionReleaseConfig, *, results_dir: Path, phase_lines: dict[str, str]
) -> dict[str, Any]:
    from nexus.models import count_parameters, decoder_layers
    from nexus.multimodal.data import accuracy_examples
    from nexus.multimodal.vlm import load_vlm
    from nexus.utils import atomic_write_json, atomic_write_text, write_dir_atomically

    results_dir = Path(results_dir)
    examples = accuracy_examples(config)
    student, processor, student_dir, student_acc, student_seconds, choice = choose_student(config, examples)
    log.info("release student: %s", choice)
    teacher, t_processor, teacher_path = load_vlm(config.teacher)
    teacher_acc, teacher_seconds = _timed_accuracy(teacher, t_processor, examples)
    teacher_info = (count_parameters(teacher), len(decoder_layers(teacher)))
    del teacher
    table = retention_table(teacher_acc, student_acc)

    def ratio(metric: str) -> float | None:
        t = teacher_acc[metric]
        return student_acc[metric] / t if t else None

    heatmap = results_dir / "mm_profile" / "teacher.png"
    summary = {
        "release_dir": str(config.release_dir),
        "teacher": config.teacher,
        "teacher_path": teacher_path,
        "student": str(student_dir),
        "student_choice": choice,
        "data": config.data,
        "eval_rows": len(examples),
        "teacher_layers": teacher_info[1],
        "student_layers": len(decoder_layers(student)),
        "teacher_parameters": teacher_info[0],
        "student_parameters": count_parameters(student),
        "teacher_accuracy": {k: teacher_acc[k] for k in ("n", "multiple_choice", "exact_match")},
        "student_accuracy": {k: student_acc[k] for k in ("n", "multiple_choice", "exact_match")},
        "retention_multiple_choice": ratio("multiple_choice"),
        "retention_exact_match": ratio("exact_match"),
        "teacher_seconds": round(teacher_seconds, 2),
        "student_seconds": round(student_seconds, 2),
        "speed_ratio": round(student_seconds / teacher_seconds, 3) if teacher_seconds else None,
        "heatmap": str(heatmap) if heatmap.is_file() else None,
        "phases": phase_lines,
    }
    report = results_dir / REPORT
    atomic_write_text(report, comparison_report(teacher_acc, student_acc))
    summary["report_file"] = str(report)

    def write(tmp: Path) -> None:
        for item in student_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        if heatmap.is_file():
            shutil.copy2(heatmap, tmp / HEATMAP)
        atomic_write_json(tmp / MANIFEST, {**summary, "retention": table, "kind": "nexus-vlm-release"})
        atomic_write_text(tmp / "README.md", model_card(summary, table))

    write_dir_atomically(Path(config.release_dir), write, what="the release")
    out = results_dir / "mm_release"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", {**summary, "retention": table})
    summary["report"] = (
        f"Teacher: {_scores(teacher_acc)}\n"
        f"Student: {_scores(student_acc)}\n"
        f"Shipped: {choice}\n"
        f"Side-by-side report: {report}"
    )
    return summary
