"""Phase 5: the release ``nexus-release-v1/``.

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
import platform
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from nexus.config import from_dict, to_dict
from nexus.errors import NexusError
from nexus.pipeline.runner import MARKER, PipelineContext, archive, read_marker
from nexus.utils import apply_umask, atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "nexus_manifest.json"
HEATMAP = "sensitivity_heatmap.png"
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
PACKAGES = (
    "nexus-distill",
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "gguf",
    "faiss-cpu",
    "sentence-transformers",
    "numpy",
)


@dataclass
class ReleaseConfig:
    """Phase 5 (``release`` section)."""

    teacher: str = field(default="default", metadata={"help": "teacher spec (benchmark and alignment)"})
    student: str = field(
        default="best",
        metadata={
            "help": "the released student: 'best' (the routed student only when its held-out KD is no "
            "worse than the dense student it came from, else the dense one), 'router', 'train', "
            "'distill', or a model spec"
        },
    )
    release_dir: str = field(default="nexus-release-v1", metadata={"help": "where the release goes"})
    seed: int = field(default=0, metadata={"help": "seed for the student profile and the benchmark draw"})
    docs: list[str] = field(
        default_factory=lambda: ["docs", "README.md"],
        metadata={
            "help": "documents for the knowledge index (relative paths: working dir, then the Nexus tree)"
        },
    )
    index: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "knowledge index settings (IndexConfig)"}
    )
    benchmark: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "benchmark settings (BenchmarkConfig)"}
    )
    profile_student: bool = field(
        default=True, metadata={"help": "profile the student for structural alignment"}
    )
    student_profile: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "overrides of the student's profile config (ProfileConfig)"}
    )


PHASE_MODELS = ("router", "train", "distill")  # newest first


def _heldout_kd(summary: dict[str, Any]) -> float | None:
    ev = summary.get("eval") or {}
    return ev.get("kd", ev.get("kd_topk"))


def choose_student(choice: str, results_dir: Path) -> tuple[str, str]:
    """The model to release and why (one line for the card and the log)."""
    if choice not in ("best", *PHASE_MODELS):
        return choice, f"given in the release config: {choice}"
    if choice in PHASE_MODELS:
        path = results_dir / choice / "model"
        if not (path / "config.json").is_file():
            raise NexusError(f"release.student is '{choice}' but {path} does not exist: run that phase first")
        return str(path), f"the {choice} phase's output (release.student: {choice})"
    existing = [k for k in PHASE_MODELS if (results_dir / k / "model" / "config.json").is_file()]
    if not existing:
        raise NexusError(
            f"no trained student under {results_dir} (distill, train or router): run those phases first"
        )
    # The router phase evaluates the dense model it started from and the routed one on the same
    # held-out rows: release the routed student only if routing did not cost fidelity there.
    router_file = results_dir / "router" / "summary.json"
    if "router" in existing and router_file.is_file():
        summary = json.loads(router_file.read_text())
        routed, dense = _heldout_kd(summary), _heldout_kd({"eval": summary.get("dense_eval")})
        dense_key = next((k for k in ("train", "distill") if k in existing), None)
        if routed is not None and dense is not None and dense_key is not None:
            key = "router" if routed <= dense else dense_key
            reason = (
                f"held-out KD on the router phase's rows: routed {routed:.3f} vs dense {dense:.3f} "
                f"nats/token -> {key}"
            )
            return str(results_dir / key / "model"), reason
    return str(results_dir / existing[0] / "model"), f"the newest phase output ({existing[0]})"


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


def _profile_student(cfg: ReleaseConfig, model_dir: Path, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.profiling.config import ProfileConfig
    from nexus.profiling.phase import run_profile

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
    profile_cfg = from_dict(ProfileConfig, values, "release.student_profile")
    return run_profile(
        profile_cfg,
        results_dir=ctx.results_dir,
        flags=ctx.flags,
        printer=ctx.printer,
        phase=5,
        phase_name="Release",
    )


def _benchmark(cfg: ReleaseConfig, model_dir: Path, ctx: PipelineContext) -> dict[str, Any]:
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


def _data_sources(ctx: PipelineContext) -> list[str]:
    """The data sources of phases 2-4 (their config sections' ``data``, default ``builtin``)."""
    return sorted(
        {
            s
            for key in ("distill", "train", "router")
            for s in (getattr(ctx.config, key) or {}).get("data", ["builtin"])
        }
    )


def _hash_data_sources(sources: list[str]) -> dict[str, str]:
    hashes = {}
    for source in sources:
        path = Path(source)
        if path.is_file():
            hashes[source] = sha256_file(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            hashes[source] = "dir:" + "".join(sha256_file(p)[:16] for p in files)[:64]
        else:
            hashes[source] = (
                "builtin (generated by nexus.data.builtin)" if source == "builtin" else "not a local file"
            )
    return hashes


def _teacher_identity(spec: str) -> dict[str, Any]:
    from nexus.models import resolve_model

    resolved = resolve_model(spec)
    source = Path(resolved.source)
    identity: dict[str, Any] = {"spec": spec, "loaded_from": resolved.describe()}
    if source.is_file():
        identity["sha256"] = sha256_file(source)
    else:
        weights = sorted(Path(resolved.path).glob("*.safetensors"))
        identity["weights_sha256"] = {w.name: sha256_file(w) for w in weights}
    return identity


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _model_card(
    cfg: ReleaseConfig, manifest: dict[str, Any], bench: dict[str, Any], align: dict[str, Any]
) -> str:
    from nexus.benchmark.report import render_summary_table

    student = manifest["student"]
    pruned = student.get("pruned_from") or {}
    phases = manifest["phases"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [nexus, distillation, knowledge-distillation]",
        "---",
        "",
        f"# {Path(cfg.release_dir).name}",
        "",
        f"A student distilled by [Nexus](https://github.com/) from **{manifest['teacher']['spec']}** "
        f"({manifest['teacher']['loaded_from']}).",
        "",
        "| | |",
        "| :--- | :--- |",
        f"| Architecture | {student['architecture']} |",
        f"| Layers | {student['layers']}"
        + (f" (teacher layers {pruned.get('keep_layers')})" if pruned.get("keep_layers") else "")
        + " |",
        f"| Parameters | {student['parameters']:,} |",
        f"| Teacher parameters | {manifest['teacher_info']['parameters']:,} |",
        f"| Chosen because | {manifest['student_choice']} |",
        f"| Built | {manifest['created_at']} |",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{Path(cfg.release_dir).name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{Path(cfg.release_dir).name}")',
        "```",
        "",
        f"Chat with retrieval from the bundled knowledge index: `python scripts/inference.py --model_path {cfg.release_dir}`.",
        "",
        "## Benchmark: teacher vs student",
        "",
    ]
    if bench:
        lines += [render_summary_table(bench), "", "```text", bench.get("console", "").strip(), "```", ""]
        fid = bench.get("fidelity") or {}
        if "kl_teacher_student" in fid:
            lines += [
                f"Distillation fidelity on {fid['tokens']:,} held-out tokens: mean KL(teacher‖student) "
                f"{fid['kl_teacher_student']:.3f} nats/token, top-1 agreement {fid['top1_agreement']:.1%}.",
                "",
            ]
    else:
        lines += ["Not benchmarked (disabled in the release config).", ""]
    lines += ["## Structural alignment (NIWT)", ""]
    if align:
        lines += [
            f"Overall alignment score: **{align.get('overall', float('nan')):.3f}** (per capability: "
            + ", ".join(
                f"{cap} Spearman {v.get('spearman', float('nan')):.2f}"
                for cap, v in align.get("capabilities", {}).items()
            )
            + ").",
            "",
            f"![teacher vs student layer sensitivity]({HEATMAP})",
            "",
        ]
    else:
        lines += ["Not measured (no teacher profile, or disabled).", ""]
    lines += ["## How it was made", "", "| Phase | Time | Result |", "| :--- | ---: | :--- |"]
    for p in phases:
        lines.append(f"| {p['number']}. {p['name']} | {p['seconds']:.0f} s | {p.get('line', '')} |")
    lines += ["", f"Data, configs, hashes and package versions: `{MANIFEST}`.", ""]
    return "\n".join(lines)


def run_release(cfg: ReleaseConfig, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.knowledge import IndexConfig, build_index
    from nexus.models import model_info, resolve_model
    from nexus.pipeline.phases import PHASES

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
        profiled = _profile_student(cfg, partial, ctx)
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
    for phase in PHASES:
        marker = read_marker(ctx.results_dir / phase.key)
        if marker:
            phases.append(
                {
                    "number": phase.number,
                    "name": phase.name,
                    "seconds": marker["seconds"],
                    "summary": marker.get("summary"),
                    "line": phase.summary_line(marker.get("summary", {})),
                }
            )
    data_sources = _data_sources(ctx)
    manifest = {
        "format": "nexus-release",
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "teacher": _teacher_identity(cfg.teacher),
        "teacher_info": model_info(cfg.teacher),
        "student": model_info(str(partial)),
        "student_choice": reason,
        "data": _hash_data_sources(data_sources),
        "knowledge": {
            "documents": [str(d) for d in docs],
            **{k: v for k, v in index.items() if k != "paths"},
        },
        "configs": {"pipeline": to_dict(ctx.config), "source": ctx.source, "release": to_dict(cfg)},
        "packages": _versions(),
        "phases": phases,
        "alignment": align or None,
        "benchmark": {k: v for k, v in bench.items() if k != "console"} or None,
    }
    atomic_write_json(partial / MANIFEST, manifest)
    atomic_write_text(partial / "README.md", _model_card(cfg, manifest, bench, align))

    apply_umask(partial)  # readable by the team: copied models may be 0600 (transformers 5 saves them so)
    old = archive(release)
    partial.rename(release)
    if old:
        ctx.printer.message(f"previous release archived to {old}")
    summary["release_dir"] = str(release)
    return summary


__all__ = ["MARKER", "ReleaseConfig", "run_release"]
