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
   their hashes, configs, package versions, per-phase times, benchmark results);
6. with ``gguf`` set, the student as ``<name>-<type>.gguf`` for llama.cpp / Ollama (written
   right after the model is copied, so an export that fails does so before the benchmark).
"""

from __future__ import annotations

import json
import logging
import os
import re
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
from nexus.release.config import HEATMAP, MANIFEST, PHASE_MODELS, ReleaseConfig, choose_student
from nexus.utils import _exchange, apply_umask, atomic_write_json, atomic_write_text, fsync_dir, sha256_file

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
        "student_name": Path(cfg.release_dir).name,  # the build folder is the release-to-be
        "phase": 5,
        "phase_name": "Release",
    }
    bench_cfg = from_dict(BenchmarkConfig, values, "release.benchmark")
    return run_benchmark(bench_cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _retention(cfg: ReleaseConfig, ctx: RunContext, released: Path, partial: Path) -> dict[str, Any]:
    """The retention report (``results/retention.md``, ``.json``, ``.png``; the plot is copied
    into the release for the card). A failing measure fills its own cells; a report that cannot
    be built at all does not stop the release: the card says why."""
    from nexus.release.config import retention_config

    if not cfg.retention_enabled:
        return {}
    try:
        from nexus.retention.run import REPORT_PNG, run_retention

        report = run_retention(
            ctx.results_dir, retention_config(cfg), title=None, released=released, say=ctx.printer.message
        )
    except Exception as exc:  # the release is worth more than one of its reports
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        log.warning("retention report failed: %s", first)
        return {"error": first if isinstance(exc, NexusError) else f"{type(exc).__name__}: {first}"}
    if "plot" in report["paths"]:
        shutil.copy2(report["paths"]["plot"], partial / REPORT_PNG)
        report["plot"] = REPORT_PNG
    return report


def check_code_sandbox(cfg: ReleaseConfig) -> None:
    """Refuse now what the benchmark would refuse at the end of the run: code tasks on a machine
    without user/mount/network/PID namespaces, unless ``allow_unsandboxed_code`` is set (the
    pipeline calls this before phase 1, not after hours of training)."""
    if not cfg.benchmark.get("enabled", True):
        return
    from nexus.benchmark.runner import BenchmarkConfig
    from nexus.benchmark.sandbox import SandboxUnavailable, require_isolation
    from nexus.benchmark.tasks import resolve_task_specs

    settings = {k: v for k, v in cfg.benchmark.items() if k != "enabled"}
    bench = from_dict(BenchmarkConfig, {"teacher": cfg.teacher, **settings}, "release.benchmark")
    specs = resolve_task_specs(bench.tasks, Path(bench.data_dir) if bench.data_dir else None)
    if any(s.kind == "code" for s in specs):
        try:
            require_isolation(bench.allow_unsandboxed_code)
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(
                f"{exc} (in the pipeline config: release.benchmark.allow_unsandboxed_code: true, "
                "or tasks without code); checked before phase 1"
            ) from None


def check_gguf_export(cfg: ReleaseConfig, dense_student: str) -> None:
    """Refuse now a ``gguf`` the student's family or tokenizer cannot have (the pipeline calls this
    before phase 1 with the model phase 2 starts from: the dense students keep its architecture and
    tokenizer). That the router phase makes the student MoE is said at the release, not refused."""
    if cfg.gguf == "none":
        return
    from nexus.models.gguf_export import check_source

    spec = dense_student if cfg.student in ("best", *PHASE_MODELS) else cfg.student
    try:
        check_source(spec)
    except NexusError as exc:
        raise NexusError(f"release.gguf is {cfg.gguf}, but {exc} (checked before phase 1)") from None


def _write_gguf(cfg: ReleaseConfig, partial: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """``<name>-<type>.gguf`` beside the model in the build folder (published with it), or, for a
    routed student, the reason there is none; None when ``gguf`` is ``none``."""
    if cfg.gguf == "none":
        return None
    from transformers import AutoConfig

    from nexus.models.gguf_export import export_gguf, mixture_of_experts_refusal

    name = Path(cfg.release_dir).name
    refusal = mixture_of_experts_refusal(AutoConfig.from_pretrained(partial))
    if refusal:  # a routed release: the format has no place for its experts
        say(f"[Phase 5: Release] no GGUF written: {refusal}")
        return {"type": cfg.gguf, "skipped": refusal}
    result = export_gguf(partial, partial / f"{name}-{cfg.gguf}.gguf", cfg.gguf, name=name)
    say(f"[Phase 5: Release] wrote {result.path.name} ({result.bytes / 2**20:.1f} MiB)")
    return {
        "file": result.path.name,
        "type": cfg.gguf,
        "bytes": result.bytes,
        "architecture": result.architecture,
    }


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
    settle(release, ctx.printer)  # what a run killed while publishing left
    if partial.exists():
        shutil.rmtree(partial)  # our own unfinished build from an interrupted run
    student_spec, reason = choose_student(cfg.student, ctx.results_dir)
    ctx.printer.message(f"[Phase 5: Release] student: {reason}")
    source = Path(resolve_model(student_spec).path)
    _copy_model(source, partial)
    _carry_student_record(partial, ctx.results_dir)
    gguf = _write_gguf(cfg, partial, ctx.printer.message)

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

    retention = _retention(cfg, ctx, source, partial)

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
            **{k: v for k, v in index.items() if k != "paths"},
            "document_count": index.get("documents", len(docs)),
            "documents": [str(d) for d in docs],  # made relative (or name + hash) by _portable
        },
        "configs": {"pipeline": to_dict(ctx.config), "source": ctx.source, "release": to_dict(cfg)},
        "packages": package_versions(),
        "phases": phases,
        "alignment": align or None,
        "benchmark": {k: v for k, v in bench.items() if k != "console"} or None,
        "retention": retention.get("table") or retention.get("error"),
        "gguf": gguf,
    }
    manifest = _portable(manifest, _roots(release, partial, ctx.results_dir))
    atomic_write_json(partial / MANIFEST, manifest)
    atomic_write_text(partial / "README.md", model_card(cfg, manifest, bench, align, retention))

    apply_umask(partial)  # readable by the team: copied models may be 0600 (transformers 5 saves them so)
    old = publish(partial, release)
    if old:
        ctx.printer.message(f"previous release archived to {old}")
    summary["release_dir"] = str(release)
    return summary


# ---------------------------------------------------------------------------- portable manifest
#
# The manifest names no folder of the machine that built the release: a path under the release
# (or its build folder) becomes relative to the release's parent ("nexus-release-v1/..."), one
# under the results folder's parent, the working directory or the Nexus source tree becomes
# relative to it, and any other absolute path becomes its name, plus "@sha256:<hex>" for a file
# (a teacher checkpoint, a document, a data file). Specs such as "builtin:rag=800" are unchanged.

_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()\[\]{}<>|]*")


def _roots(release: Path, partial: Path, results_dir: Path) -> list[tuple[Path, str]]:
    release = release.absolute()
    roots = [
        (partial.absolute(), release.name),
        (release.parent, ""),
        (results_dir.absolute().parent, ""),
        (Path.cwd(), ""),
        (Path(__file__).resolve().parents[3], ""),  # the source tree (the default docs)
    ]
    return [(r, name) for r, name in roots if r != Path(r.anchor)]


def _portable_path(text: str, roots: list[tuple[Path, str]]) -> str:
    path = Path(text)
    for root, name in roots:
        for base in {root, root.resolve()}:
            if path == base or path.is_relative_to(base):
                rel = path.relative_to(base).as_posix()
                joined = "/".join(p for p in (name, rel) if p and p != ".")
                return joined or "."
    if path.is_file():
        return f"{path.name}@sha256:{sha256_file(path)}"
    return path.name


def _portable(value: Any, roots: list[tuple[Path, str]]) -> Any:
    """``value`` with every absolute path in its strings made portable (see above)."""
    if isinstance(value, dict):
        return {_portable(k, roots): _portable(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v, roots) for v in value]
    if isinstance(value, str) and "/" in value:
        return _ABSOLUTE.sub(lambda m: _portable_path(m.group(0), roots), value)
    return value


# ---------------------------------------------------------------------------- publishing
#
# The complete build in ``<release>.partial`` replaces the release without a moment where the
# release path is missing:
#
# 1. the build is renamed to ``.<release>.swap`` (the slot; a build is never deleted from there);
# 2. renameat2(RENAME_EXCHANGE) swaps the slot and the release in one step: the release path holds
#    the new build and the slot the old release;
# 3. the slot is archived as ``<release>.archive-<time>`` (as before: never deleted).
#
# Where the file system cannot exchange, step 2 is two renames (the release to ``.<release>.previous``,
# the slot to the release), and a kill between them leaves the release path missing until the next
# phase 5 (or ``settle``) puts the previous release back. ``settle`` finishes whatever a killed
# publish left: a slot or previous copy becomes the release when there is none, else it is archived.


def _slot(release: Path) -> Path:
    return release.with_name(f".{release.name}.swap")


def _previous(release: Path) -> Path:
    return release.with_name(f".{release.name}.previous")


def settle(release: Path, printer: StatusPrinter | None = None) -> None:
    """Finish what a publish killed half-way left next to ``release`` (see above)."""
    for leftover in (_previous(release), _slot(release)):
        if not leftover.is_dir():
            continue
        if not release.exists():
            os.rename(leftover, release)
            fsync_dir(release.parent)
        else:
            moved = archive(leftover, like=release)
            if printer is not None:
                printer.message(f"release left by an interrupted run archived to {moved}")


def publish(partial: Path, release: Path) -> Path | None:
    """Put the complete build ``partial`` in place of ``release`` (see above); returns where the
    previous release was archived, if there was one."""
    settle(release)
    if not release.exists():
        os.rename(partial, release)
        fsync_dir(release.parent)
        return None
    slot = _slot(release)
    os.rename(partial, slot)
    fsync_dir(release.parent)
    if not _exchange(slot, release):
        previous = _previous(release)
        os.rename(release, previous)
        os.rename(slot, release)
        fsync_dir(release.parent)
        return archive(previous, like=release)
    fsync_dir(release.parent)
    return archive(slot, like=release)


__all__ = ["ReleaseConfig", "check_code_sandbox", "check_gguf_export", "publish", "run_release", "settle"]
