"""The retention table: cells with 95% intervals, "% of teacher", paired tests between phases,
rendered as markdown (``retention.md``, the model card's "Retention" section), JSON and a plot.

Cells: a proportion (accuracy, pass@1, grounded answers) with its Wilson interval; a per-row
mean (held-out KL, top-1 agreement, bits per byte) with its Student-t interval over rows.
Changes between consecutive students (plan -> phase 2 -> phase 3 -> phase 4, skipping phases
that did not run) on the rows both scored: exact McNemar for per-item right/wrong, the paired
t-test for per-row values. "% of teacher": the student's figure over the teacher's, inverted for
bits per byte (lower is better: 100% = as good as the teacher); for top-1 agreement the agreement
itself (the teacher's own is 100%); none for KL, whose teacher value is 0 by definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.benchmark import stats


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    measure: str  # the cached measure it reads
    values: str  # the per-row field: "correct" (binary) or a float field
    side: str | None = None  # PIQA: only rows of this tuning side
    lower_is_better: bool = False
    percent: bool = True  # shown as a percentage

    @property
    def binary(self) -> bool:
        return self.values == "correct"


COLUMNS = (
    Column("piqa", "PIQA (all)", "piqa", "correct"),
    Column("piqa_tune", "PIQA tune", "piqa", "correct", side="tune"),
    Column("piqa_untuned", "PIQA untuned", "piqa", "correct", side="untuned"),
    Column("gsm8k", "GSM8K held-out", "gsm8k", "correct"),
    Column("humaneval", "HumanEval pass@1", "humaneval", "correct"),
    Column("builtin-code", "built-in code", "builtin-code", "correct"),
    Column("builtin-math", "built-in math", "builtin-math", "correct"),
    Column("builtin-chat", "built-in chat", "builtin-chat", "correct"),
    Column(
        "kl", "held-out KL (nats/token, lower better)", "heldout", "kl", lower_is_better=True, percent=False
    ),
    Column("top1", "top-1 agreement", "heldout", "top1"),
    Column("bpb", "bits/byte (lower better)", "heldout", "bpb", lower_is_better=True, percent=False),
    Column("grounding", "grounded answers", "grounding", "correct"),
)


def _rows_of(result: dict[str, Any], column: Column) -> tuple[list[Any], list[Any]] | None:
    """(ids, values) of ``column`` in one model's cached measure result (None: no such field)."""
    values = result.get(column.values)
    if values is None:
        return None
    ids = result.get("ids") or list(range(len(values)))
    if column.side is not None:
        keep = [k for k, s in enumerate(result.get("side") or []) if s == column.side]
        return [ids[k] for k in keep], [values[k] for k in keep]
    return list(ids), list(values)


def cell(result: dict[str, Any] | None, column: Column) -> dict[str, Any]:
    """One model's figure for one column: value, 95% interval, rows; or why there is none."""
    if result is None:
        return {"missing": "not measured"}
    if "error" in result:
        return {"error": result["error"]}
    rows = _rows_of(result, column)
    if rows is None:
        return {"missing": "reference" if column.measure == "heldout" else "not measured"}
    _, values = rows
    if not values:
        return {"missing": "no rows"}
    if column.binary:
        k = sum(bool(v) for v in values)
        lo, hi = stats.wilson_interval(k, len(values))
        return {"value": k / len(values), "ci95": [lo, hi], "n": len(values), "interval": "wilson"}
    lo, hi = stats.mean_interval(values)
    return {"value": sum(values) / len(values), "ci95": [lo, hi], "n": len(values), "interval": "t"}


def change(
    before: dict[str, Any] | None, after: dict[str, Any] | None, column: Column
) -> dict[str, Any] | None:
    """The paired change of ``column`` between two models on the rows both scored."""
    if not before or not after or "error" in before or "error" in after:
        return None
    a, b = _rows_of(before, column), _rows_of(after, column)
    if a is None or b is None:
        return None
    left = dict(zip(a[0], a[1], strict=True))
    shared = [(left[i], v) for i, v in zip(b[0], b[1], strict=True) if i in left]
    if not shared:
        return None
    x = [p for p, _ in shared]
    y = [q for _, q in shared]
    delta = sum(y) / len(y) - sum(x) / len(x)
    if column.binary:
        mc = stats.mcnemar_exact([bool(v) for v in x], [bool(v) for v in y])
        return {"delta": delta, "p": mc["p_value"], "test": "exact McNemar", "n": len(shared),
                "only_before": mc["b"], "only_after": mc["c"]}  # fmt: skip
    return {"delta": delta, "p": stats.paired_t_p(x, y), "test": "paired t", "n": len(shared)}


def percent_of_teacher(student: dict[str, Any], teacher: dict[str, Any], column: Column) -> float | None:
    if "value" not in student or column.key == "kl":
        return None
    if column.key == "top1":  # the teacher agrees with itself on every token
        return student["value"]
    if "value" not in teacher:
        return None
    s, t = student["value"], teacher["value"]
    if column.lower_is_better:
        return t / s if s > 0 else None
    return s / t if t > 0 else None


def build_table(models: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's content from the model rows and their per-measure results.

    ``models``: dicts with ``key``, ``label``, ``status`` ("measured" / "not run" / ...) and
    ``note``; ``results[model_key][measure]``: a measure's cached per-row outcome or ``{"error"}``.
    """
    teacher = results.get("teacher", {})
    table_rows = []
    for m in models:
        mine = results.get(m["key"], {})
        cells = {}
        for col in COLUMNS:
            if m["status"] != "measured":
                cells[col.key] = {"missing": m["status"]}
                continue
            c = cell(mine.get(col.measure), col)
            if m["key"] != "teacher":
                t = cell(teacher.get(col.measure), col)
                c["of_teacher"] = percent_of_teacher(c, t, col)
            cells[col.key] = c
        table_rows.append({**m, "cells": cells})
    students = [m for m in models if m["key"] != "teacher" and m["status"] == "measured"]
    changes = []
    for before, after in zip(students, students[1:], strict=False):
        per_col = {
            col.key: change(results.get(before["key"], {}).get(col.measure),
                            results.get(after["key"], {}).get(col.measure), col)
            for col in COLUMNS
        }  # fmt: skip
        changes.append({"from": before["key"], "to": after["key"], "from_label": before["label"],
                        "to_label": after["label"], "columns": per_col})  # fmt: skip
    return {
        "columns": [{"key": c.key, "title": c.title, "lower_is_better": c.lower_is_better} for c in COLUMNS],
        "rows": table_rows,
        "changes": changes,
    }


# -- rendering ------------------------------------------------------------------------------------


def _fmt(value: float, column: Column) -> str:
    return f"{100 * value:.1f}%" if column.percent else f"{value:.3f}"


def _cell_text(c: dict[str, Any], column: Column) -> str:
    if "error" in c:
        return f"failed: {c['error']}"
    if "missing" in c:
        return {"reference": "(reference)"}.get(c["missing"], c["missing"])
    lo, hi = c["ci95"]
    text = f"{_fmt(c['value'], column)} [{_fmt(lo, column)}, {_fmt(hi, column)}] n={c['n']}"
    if c.get("of_teacher") is not None:
        text += f"; {100 * c['of_teacher']:.1f}% of teacher"
    return text


def _change_text(ch: dict[str, Any] | None, column: Column) -> str:
    if ch is None:
        return "-"
    delta = f"{100 * ch['delta']:+.1f} pts" if column.percent else f"{ch['delta']:+.3f}"
    return f"{delta}, p={ch['p']:.3g}"


def render_markdown(table: dict[str, Any], *, title: str | None = "Retention") -> str:
    """Markdown: one table per group of columns (models down, measures across), then the
    phase-to-phase changes with their paired p-values, then how the figures were made."""
    lines = [f"## {title}", ""] if title else []
    groups = [COLUMNS[:5], COLUMNS[5:8], COLUMNS[8:]]
    for group in groups:
        lines.append("| model | " + " | ".join(c.title for c in group) + " |")
        lines.append("| :--- |" + " ---: |" * len(group))
        for row in table["rows"]:
            label = row["label"] + (f" ({row['note']})" if row.get("note") else "")
            lines.append(
                f"| {label} | " + " | ".join(_cell_text(row["cells"][c.key], c) for c in group) + " |"
            )
        lines.append("")
    if table["changes"]:
        lines += ["Phase-to-phase changes on the rows both models scored (p: exact McNemar for right/wrong "
                  "items, paired t-test for per-row KL, agreement and bits per byte):", ""]  # fmt: skip
        for group in groups:
            lines.append("| change | " + " | ".join(c.title for c in group) + " |")
            lines.append("| :--- |" + " ---: |" * len(group))
            for ch in table["changes"]:
                lines.append(
                    f"| {ch['from_label']} -> {ch['to_label']} | "
                    + " | ".join(_change_text(ch["columns"][c.key], c) for c in group)
                    + " |"
                )
            lines.append("")
    lines += [
        "Cells: value [95% interval] n=rows; proportions with Wilson intervals, per-row means (KL, "
        "agreement, bits per byte) with Student-t intervals. PIQA: the shared rows, scored by the "
        "lm-eval rule; *untuned* is the quarter of them no decision may be tuned on "
        "(`nexus.data.splits.tuning_side`), *tune* the rest. GSM8K: its evaluation split. Held-out "
        "KL, agreement and bits per byte: evaluation-split rows of PIQA, GSM8K, Code Alpaca and "
        "Self-Instruct (prompt + reference answer), which no training reader returns. Grounded "
        "answers: the held-out set of `benchmarks/bench_grounding.py`.",
        "",
    ]
    return "\n".join(lines)


def plot(table: dict[str, Any], path: Path) -> str | None:
    """A grouped bar chart of "% of teacher" per measure and model (None), or why it was not
    drawn (matplotlib missing, nothing to draw)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: retention.png not drawn"
    cols = [c for c in COLUMNS if c.key != "kl"]
    students = [r for r in table["rows"] if r["key"] != "teacher" and r["status"] == "measured"]
    if not students:
        return "no student measured: retention.png not drawn"
    fig, ax = plt.subplots(figsize=(max(8, len(cols) * 1.1), 4.5))
    width = 0.8 / len(students)
    for k, row in enumerate(students):
        xs, ys = [], []
        for j, col in enumerate(cols):
            value = row["cells"][col.key].get("of_teacher")
            if value is not None:
                xs.append(j + (k - (len(students) - 1) / 2) * width)
                ys.append(100 * value)
        ax.bar(xs, ys, width=width, label=row["label"])
    ax.axhline(100, color="black", linewidth=0.8)
    ax.axhline(97, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cols)), [c.title.split(" (")[0] for c in cols], rotation=30, ha="right")
    ax.set_ylabel("% of teacher")
    ax.set_title("Retention of the teacher, per measure and phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
