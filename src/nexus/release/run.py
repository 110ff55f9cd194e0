"""Phase 5: ``run_release`` builds the release ``nexus-release-v1/``.

Built in ``<release_dir>.partial/`` and moved into place only when complete (an older release
is archived, never deleted):

1. the final student (HF checkpoint + tokenizer, loadable by plain ``transformers``);
2. NIWT profile of the student with the teacher's probes -> structural alignment score and the
   teacher-vs-student sensitivity heatmap (``sensitivity_heatmap.png``);
3. the head-to-head benchmark against the teacher (``results/benchmark_comparison.md``,
   ``results/benchmark_results.json``);
4. the Knowledge Tower built from the configured documents (by default the project's own
   ``docs/`` and ``README.md``, so the release can answer questions about Nexus itself);
5. the model card ``README.md`` and ``nexus_manifest.json`` (teacher and its hash, data and
   their hashes, configs, package versions, per-phase times, benchmark results).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nexus.config import from_dict, to_dict
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter
from nexus.monitor.markers import archive, read_marker
from nexus.release.card import hash_data_sources, model_card, package_versions, teacher_identity
from nexus.release.config import HEATMAP, MANIFEST, ReleaseConfig, choose_student
from nexus.utils import apply_umask, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# Model files copied into the release (no optimizer states, no projections, no checkpoints).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "nexus_student.json",
)
PHASE_KEYS = ("profile", "distill", "train", "router")  # results/<key>/COMPLETE.json, in order


# (profile config values, where they come from) -> run_profile's summary; phase 1's profiler,
# passed in by the pipeline so that this phase does not import that one.
Profiler = Callable[[dict[str, Any], str], dict[str, Any]]


class RunContext(Protocol):
    """What the release needs from the run that calls it (the pipeline's context has it all)."""

    config: Any  # the pipeline config: its sections name the data, and it goes into the manifest
    results_dir: Path
    flags: Flags
    printer: StatusPrinter
    source: str  # where the pipeline config came from


def _find_doc(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    tree = Path(__file__).resolve().parents[3] / path
    if tree.exists():
        return tree
    raise NexusError(f"release document not found: {path}")


def _copy_model(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    copied = 0
    for pattern in MODEL_FILES:
        for file in source.glob(pattern):
            shutil.copy2(file, target / file.name)
            copied += 1
    if not (target / "config.json").is_file() or not list(target.glob("*.safetensors")):
        raise NexusError(f"{source} is not a complete model directory (config.json + safetensors)")


def _carry_student_record(target: Path, results_dir: Path) -> None:
    """Keep the pruning record (teacher layer of each student layer) in the release's config, so
    alignment maps layers right even when a later phase rewrote the config (the MoE conversion)."""
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("nexus_student"):
        return
    for key in ("router", "train", "distill"):
        upstream = results_dir / key / "model" / "config.json"
        if upstream.is_file():
            record = json.loads(upstream.read_text()).get("nexus_student")
            if record and len(record.get("keep_layers", [])) == config.get("num_hidden_layers"):
                config["nexus_student"] = record
                atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
                return


def _profile_student(
    cfg: ReleaseConfig, model_dir: Path, ctx: RunContext, profiler: Profiler | None
) -> dict[str, Any]:
    if profiler is None:
        log.info("no profiler given: structural alignment skipped")
        return {}
    teacher_profile = ctx.results_dir / "profile" / "teacher.json"
    if not teacher_profile.is_file():
        log.info("no teacher profile at %s: structural alignment skipped", teacher_profile)
        return {}
    teacher_cfg = json.loads(teacher_profile.read_text())["config"]
    # Same probes and sizes as the teacher's profile; the teacher's own answers for chat probes.
    base = {
        k: teacher_cfg[k]
        for k in (
            "capabilities",
            "probes",
            "num_probes",
            "max_tokens",
            "perturbation",
            "noise_scale",
            "batch_tokens",
            "precision",
        )
        if k in teacher_cfg
    }
    values = {
        **base,
        "model": str(model_dir),
        "name": "student",
        "seed": cfg.seed,
        "compare": str(teacher_profile),
        "chat_answer_model": cfg.teacher,
        **cfg.student_profile,
    }
    return profiler(values, "release.student_profile")


def _benchmark(cfg: ReleaseConfig, model_dir: Path, ctx: RunContext) -> dict[str, Any]:
    from nexus.benchmark.runner import BenchmarkConfig, run_benchmark

    settings = {k: v for k, v in cfg.benchmark.items() if k != "enabled"}
    values = {
        "teacher": cfg.teacher,
        "seed": cfg.seed,
        # what phases 2-4 trained on, for the benchmark's 13-gram overlap check
        "training_data": _data_sources(ctx),
        "training_seed": ctx.config.seed,
        **settings,
        "student": str(model_dir),
        "phase": 5,
        "phase_name": "Release",
    }
    bench_cfg = from_dict(BenchmarkConfig, values, "release.benchmark")
    return run_benchmark(bench_cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _data_sources(ctx: RunContext) -> list[str]:
    """The data sources of phases 2-4 (their config sections' ``data``, default ``builtin``)."""
    return sorted(
        {
            s
            for key in ("distill", "train", "router")
            for s in (getattr(ctx.config, key) or {}).get("data", ["builtin"])
        }
    )


def run_release(cfg: ReleaseConfig, ctx: RunContext, *, profiler: Profiler | None = None) -> dict[str, Any]:
    """Build the release (see the module docstring); ``profiler`` runs NIWT on the student for the
    structural alignment (the pipeline passes phase 1's profiler; None skips it)."""
    from nexus.knowledge import IndexConfig, build_index
    from nexus.models import model_info, resolve_model

    release = Path(cfg.release_dir)
    partial = release.with_name(release.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # our own unfinished build from an interrupted run
    student_spec, reason = choose_student(cfg.student, ctx.results_dir)
    ctx.printer.message(f"[Phase 5: Release] student: {reason}")
    source = Path(resolve_model(student_spec).path)
    _copy_model(source, partial)
    _carry_student_record(partial, ctx.results_dir)

    summary: dict[str, Any] = {
        "release_dir": str(release),
        "student_source": str(source),
        "student_choice": reason,
    }
    align: dict[str, Any] = {}
    if cfg.profile_student:
        profiled = _profile_student(cfg, partial, ctx, profiler)
        if profiled.get("stopped"):
            return {"stopped": True}
        align = profiled.get("alignment") or {}
        if profiled.get("heatmap"):
            shutil.copy2(profiled["heatmap"], partial / HEATMAP)
        summary["alignment_score"] = align.get("overall")

    bench: dict[str, Any] = {}
    if cfg.benchmark.get("enabled", True):
        bench = _benchmark(cfg, partial, ctx)
        if bench.get("stopped"):
            return {"stopped": True}
        summary.update(
            teacher_accuracy=bench["teacher_accuracy"],
            student_accuracy=bench["student_accuracy"],
            gap=bench["gap"],
            report=bench.get("console"),
        )

    docs = [_find_doc(d) for d in cfg.docs]
    index_cfg = from_dict(IndexConfig, cfg.index, "release.index")
    index = build_index(docs, partial, index_cfg)
    summary["knowledge_chunks"] = index.get("chunks")

    phases = []
    for key in PHASE_KEYS:  # the completion markers the pipeline wrote, in phase order
        marker = read_marker(ctx.results_dir / key)
        if marker:
            phases.append(
                {
                    "number": marker.get("phase"),
                    "name": marker.get("name"),
                    "seconds": marker["seconds"],
                    "summary": marker.get("summary"),
                    "line": marker.get("line"),
                }
            )
    data_sources = _data_sources(ctx)
    manifest = {
        "format": "nexus-release",
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "teacher": teacher_identity(cfg.teacher),
        "teacher_info": model_info(cfg.teacher),
        "student": model_info(str(partial)),
        "student_choice": reason,
        "data": hash_data_sources(data_sources),
        "knowledge": {
            "documents": [str(d) for d in docs],
            **{k: v for k, v in index.items() if k != "paths"},
        },
        "configs": {"pipeline": to_dict(ctx.config), "source": ctx.source, "release": to_dict(cfg)},
        "packages": package_versions(),
        "phases": phases,
        "alignment": align or None,
        "benchmark": {k: v for k, v in bench.items() if k != "console"} or None,
    }
    atomic_write_json(partial / MANIFEST, manifest)
    atomic_write_text(partial / "README.md", model_card(cfg, manifest, bench, align))

    apply_umask(partial)  # readable by the team: copied models may be 0600 (transformers 5 saves them so)
    old = archive(release)
    partial.rename(release)
    if old:
        ctx.printer.message(f"previous release archived to {old}")
    summary["release_dir"] = str(release)
    return summary


__all__ = ["ReleaseConfig", "run_release"]
