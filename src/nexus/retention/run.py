"""``run_retention``: the retention report of a pipeline results folder.

find the models (teacher, untrained plan student, phases 2-4) -> for each model and measure,
the cached per-row outcome or a fresh one (a model is loaded only when one of its measures is
not cached) -> the table (:mod:`nexus.retention.report`) -> ``retention.md``, ``retention.json``
and ``retention.png`` in the results folder.

Cache: ``RESULTS_DIR/retention/<measure>-<model fingerprint>-<limit>-<settings>.json``; the
fingerprint hashes the model's config and weight files (the plan student's: the teacher's and
its keep-list), so a rerun after another phase scores only the new model, and a re-trained
phase is scored again. A measure that fails is not cached; its cells say why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus.errors import NexusError
from nexus.retention.config import RetentionConfig
from nexus.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CACHE_DIR = "retention"
CACHE_VERSION = 1
REPORT_MD, REPORT_JSON, REPORT_PNG = "retention.md", "retention.json", "retention.png"
PLAN = Path("profile") / "student_plan.json"
PHASES = (("distill", "after phase 2 (distill)"), ("train", "after phase 3 (train)"),
          ("router", "after phase 4 (router)"))  # fmt: skip


def _read_yaml(path: Path) -> dict[str, Any]:
    from nexus.config import read_yaml

    try:
        return read_yaml(path) if path.is_file() else {}
    except NexusError:
        return {}


def check_results_dir(results_dir: Path) -> None:
    """A one-line error unless ``results_dir`` is a pipeline results folder."""
    if not results_dir.is_dir():
        raise NexusError(f"results folder not found: {results_dir}")
    markers = [results_dir / "pipeline_config.yaml", results_dir / PLAN]
    markers += [results_dir / key / "model" / "config.json" for key, _ in PHASES]
    if not any(p.is_file() for p in markers):
        raise NexusError(
            f"{results_dir} is not a pipeline results folder (no pipeline_config.yaml, "
            "profile/student_plan.json or <phase>/model); give the folder `nexus run` wrote (results_dir)"
        )


def teacher_spec(results_dir: Path, cfg: RetentionConfig) -> str:
    """The teacher the run used: the config's, else the run's pipeline or phase-2 config."""
    if cfg.teacher:
        return cfg.teacher
    for path in (results_dir / "pipeline_config.yaml", results_dir / "distill" / "config.yaml"):
        teacher = _read_yaml(path).get("teacher")
        if teacher:
            return str(teacher)
    return "default"


def fingerprint(spec: str) -> str:
    """Content hash of a model directory (config + weights), memoized by file stamp."""
    from nexus.models import resolve_model
    from nexus.trainer.cache import teacher_fingerprint

    path = Path(resolve_model(spec).path)
    if path.is_dir():
        return teacher_fingerprint(path)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]  # a hub name: its name is all we know


def discover_models(results_dir: Path, teacher: str) -> list[dict[str, Any]]:
    """The report's rows, in order; ``status`` is "measured" for those that can be scored, else
    why not ("not run", ...)."""
    rows: list[dict[str, Any]] = [
        {"key": "teacher", "label": f"teacher ({teacher})", "status": "measured", "spec": teacher, "note": ""}
    ]
    plan = results_dir / PLAN
    distill_cfg = _read_yaml(results_dir / "distill" / "config.yaml")
    plan_row = {"key": "plan", "label": "untrained plan student", "spec": None, "note": ""}
    if distill_cfg.get("student"):
        plan_row.update(status=f"not a pruned student (phase 2 started from {distill_cfg['student']})")
    elif plan.is_file():
        plan_row.update(status="measured", plan=str(plan))
    elif distill_cfg.get("plan") and Path(distill_cfg["plan"]).is_file():  # phase 2 run on its own
        plan_row.update(status="measured", plan=str(distill_cfg["plan"]), note="phase 2's --plan")
    elif distill_cfg.get("student_layers") and not distill_cfg.get("plan"):
        layers = int(distill_cfg["student_layers"])
        plan_row.update(status="measured", student_layers=layers, note=f"{layers} layers evenly spread")
    else:
        plan_row.update(status="not available (no profile/student_plan.json, no phase-2 plan)")
    rows.append(plan_row)
    for key, label in PHASES:
        model = results_dir / key / "model"
        row = {"key": key, "label": label, "spec": str(model), "note": ""}
        if not (model / "config.json").is_file():
            row["status"] = "not run"
        else:
            row["status"] = "measured"
            # the pipeline's completion marker, or the summary a phase run on its own writes last
            if not any((results_dir / key / name).is_file() for name in ("COMPLETE.json", "summary.json")):
                row["note"] = "partial: phase not complete"
        rows.append(row)
    return rows


def _settings_key(measure: str, cfg: RetentionConfig, precision: str, teacher_fp: str) -> str:
    settings = {"v": CACHE_VERSION, "seed": cfg.seed, "precision": precision}
    if measure == "heldout":
        settings.update(max_length=cfg.heldout_max_length, teacher=teacher_fp)
    if measure == "grounding":
        settings.update(max_new_tokens=cfg.grounding_max_new_tokens)
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def cache_path(
    results_dir: Path, measure: str, model_fp: str, cfg: RetentionConfig, precision: str, teacher_fp: str
) -> Path:
    limit = cfg.limit(measure)
    name = f"{measure}-{model_fp}-{'all' if limit is None else limit}-{_settings_key(measure, cfg, precision, teacher_fp)}"
    return results_dir / CACHE_DIR / f"{name}.json"


class _Models:
    """Loads each model once, when first needed; keeps the teacher (the held-out KL needs it)."""

    def __init__(self, cfg: RetentionConfig, teacher: str):
        import torch

        from nexus.benchmark.runner import load_for_benchmark
        from nexus.hardware import pick_device, resolve_precision
        from nexus.retention.measures import bench_config

        self.cfg, self.teacher_spec = cfg, teacher
        self.bench = bench_config(cfg)
        self.device = pick_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self._load = load_for_benchmark
        self._teacher = None

    def teacher(self):
        if self._teacher is None:
            self._teacher = self._load("teacher", self.teacher_spec, self.bench)
        return self._teacher

    def load(self, row: dict[str, Any]):
        from nexus.benchmark import scoring
        from nexus.distillation.student import pruned_student
        from nexus.models import count_parameters, load_model

        if row["key"] == "teacher":
            return self.teacher()
        if row["key"] == "plan":
            # As phase 2 builds its first student: the teacher in float32, cut to the plan.
            full, _ = load_model(self.teacher_spec, trust_remote_code=self.bench.trust_remote_code)
            pruned = pruned_student(
                full,
                teacher_name=self.teacher_spec,
                plan=row.get("plan"),
                student_layers=row.get("student_layers"),
            )
            del full
            model = pruned.model.to(device=self.device, dtype=self.dtype).eval()
            t = self.teacher()
            return scoring.LoadedModel("student", "plan", model, t.tokenizer, self.device, self.dtype,
                                       count_parameters(model), pruned.description)  # fmt: skip
        return self._load("student", row["spec"], self.bench)


def run_retention(
    results_dir: str | Path,
    cfg: RetentionConfig | None = None,
    *,
    title: str | None = "Retention",
    released: str | Path | None = None,
    embedder=None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build (or rebuild from the cache) the retention report of ``results_dir``; writes
    ``retention.md``, ``retention.json`` and ``retention.png`` there and returns the report
    (``markdown``, ``table``, ``paths``, ``notes``). ``released``: the released model's folder,
    marked in the table. ``embedder``: a loaded embedder for the grounding index (tests)."""
    import torch

    from nexus.retention import measures, report

    cfg = cfg or RetentionConfig()
    say = say or log.info
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher = teacher_spec(results_dir, cfg)
    rows = discover_models(results_dir, teacher)
    models = _Models(cfg, teacher)
    teacher_fp = fingerprint(teacher)
    for row in rows:
        if row["status"] != "measured":
            continue
        if row["key"] == "teacher":
            row["fingerprint"] = teacher_fp
        elif row["key"] == "plan":
            what = row.get("plan") and Path(row["plan"]).read_text() or str(row.get("student_layers"))
            row["fingerprint"] = hashlib.sha256(f"{teacher_fp}\0{what}".encode()).hexdigest()[:16]
        else:
            row["fingerprint"] = fingerprint(row["spec"])
        if (
            released is not None
            and row.get("spec")
            and Path(row["spec"]).resolve() == Path(released).resolve()
        ):
            row["note"] = ", ".join(n for n in (row["note"], "released") if n)

    shared: dict[str, Any] = {}  # loaded once per run: tasks, held-out texts, grounding tower

    def compute(measure: str, lm) -> dict[str, Any]:
        if measure in measures.TASK_MEASURES:
            if measure not in shared:
                shared[measure] = measures.load_measure_task(measure, cfg)
            return measures.score_task(lm, shared[measure], cfg)
        if measure == "heldout":
            if "texts" not in shared:
                shared["texts"] = measures.heldout_texts(cfg)
            ref = None if lm.role == "teacher" else models.teacher()
            if ref is not None:
                from nexus.benchmark.runner import same_tokenizer

                if not same_tokenizer(ref, lm):
                    raise NexusError("teacher and student tokenizers differ: no KL or agreement")
            return measures.score_heldout(ref, lm, shared["texts"], cfg)
        if "tower" not in shared:
            shared["tower"] = _grounding_tower(results_dir, embedder)
        return measures.score_grounding(lm, shared["tower"], cfg)

    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["status"] != "measured":
            continue
        mine: dict[str, Any] = results.setdefault(row["key"], {})
        lm = None
        for measure in cfg.measures:
            path = cache_path(results_dir, measure, row["fingerprint"], cfg, models.precision, teacher_fp)
            if path.is_file():
                mine[measure] = json.loads(path.read_text())
                continue
            try:
                if lm is None:
                    say(f"retention: loading {row['label']}")
                    lm = models.load(row)
                say(f"retention: {row['label']}: {measure} ({_limit_text(cfg.limit(measure))})")
                t0 = time.perf_counter()
                out = compute(measure, lm)
                seconds = time.perf_counter() - t0
            except Exception as exc:  # one failing measure (or model) must not sink the report
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                mine[measure] = {
                    "error": first if isinstance(exc, NexusError) else f"{type(exc).__name__}: {first}"
                }
                log.warning("retention: %s: %s failed: %s", row["label"], measure, mine[measure]["error"])
                continue
            out["seconds"] = round(seconds, 2)
            timings.setdefault(row["key"], {})[measure] = out["seconds"]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, out)
            mine[measure] = out

    table = report.build_table(rows, results)
    markdown = report.render_markdown(table, title=title)
    paths = {"markdown": results_dir / REPORT_MD, "json": results_dir / REPORT_JSON}
    notes = []
    if cfg.plot:
        note = report.plot(table, results_dir / REPORT_PNG)
        if note is None:
            paths["plot"] = results_dir / REPORT_PNG
        else:
            notes.append(note)
    atomic_write_text(paths["markdown"], markdown)
    config = {k: v for k, v in vars(cfg).items()}
    seconds = {
        key: {m: r.get("seconds") for m, r in res.items() if isinstance(r, dict)}
        for key, res in results.items()
    }
    atomic_write_json(
        paths["json"],
        {"table": table, "config": config, "precision": models.precision, "teacher": teacher,
         "seconds_per_measure": seconds, "computed_now": timings, "notes": notes},
    )  # fmt: skip
    return {"markdown": markdown, "table": table, "paths": {k: str(v) for k, v in paths.items()}, "notes": notes,
            "computed_now": timings}  # fmt: skip


def _limit_text(limit: int | None) -> str:
    return "all rows" if limit is None else f"{limit} rows"


def _grounding_tower(results_dir: Path, embedder):
    """The knowledge index of the held-out grounding documents, built once per results folder."""
    import shutil

    from nexus.benchmark.grounding import build_set_index
    from nexus.benchmark.grounding_sets import heldout_set
    from nexus.knowledge.tower import KnowledgeTower

    where = results_dir / CACHE_DIR / "grounding"
    index = where / "index"
    if not (index / "knowledge_meta.json").is_file():
        if where.exists():
            shutil.rmtree(where)
        build_set_index(heldout_set(), where, embedder=embedder)
    return KnowledgeTower.load(index, embedder=embedder)
