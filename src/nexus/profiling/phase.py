"""Phase 1 entry point: ``run_profile(config)`` loads the model and probes, profiles every layer,
and writes ``results/profile/<name>.json`` / ``.csv`` / ``.png`` (+ the probes it used, the
resolved config, the alignment with ``--compare`` and ``student_plan.json`` with a plan target).

Progress goes through the monitor core: phase 1 in ``results/status.json``, one step per
(capability, layer), the pause/stop flags honoured between layers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from nexus.config import save_resolved, to_dict
from nexus.errors import NexusError
from nexus.monitor import (
    Flags,
    GpuTemperature,
    KeyboardPauseCallback,
    StatusPrinter,
    StatusWriter,
    StepAction,
)
from nexus.profiling.alignment import alignment, default_layer_map
from nexus.profiling.config import PlanConfig, ProfileConfig
from nexus.profiling.heatmap import plot_heatmap
from nexus.profiling.plan import PLAN_FILE, make_plan, save_plan
from nexus.utils import atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

PROFILE_FORMAT = "nexus-niwt-profile"


# -- model identity ---------------------------------------------------------------------------------


def model_identity(resolved) -> str:
    """SHA-256 over a model directory's config.json and weight files (the hub name for hub models)."""
    path = Path(resolved.path)
    if not path.is_dir():
        return "hub:" + resolved.path
    digest = hashlib.sha256()
    files = [path / "config.json", *sorted(path.glob("*.safetensors")), *sorted(path.glob("*.bin"))]
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def default_name(config: ProfileConfig) -> str:
    if config.name:
        return config.name
    spec = config.model.rstrip("/")
    base = Path(spec).name if spec not in ("default",) else "default"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(base).stem if base.endswith(".gguf") else base) or "model"
    return base if config.perturbation == "removal" else f"{base}_{config.perturbation}"


# -- reading profiles ------------------------------------------------------------------------------


def load_profile(path: str | Path) -> dict:
    """Read a profile JSON written by :func:`run_profile` (checked for the keys the rest needs)."""
    path = Path(path)
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NexusError(f"profile not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NexusError(f"{path}: not a valid profile (bad JSON: {exc})") from None
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise NexusError(f"{path}: not a Nexus NIWT profile (format is not '{PROFILE_FORMAT}')")
    for key in ("model", "layers", "capabilities"):
        if key not in profile:
            raise NexusError(f"{path}: profile is missing '{key}'")
    for name, cap in profile["capabilities"].items():
        if len(cap.get("sensitivity", [])) != len(profile["layers"]):
            raise NexusError(
                f"{path}: capability '{name}' has {len(cap.get('sensitivity', []))} sensitivities "
                f"for {len(profile['layers'])} layers"
            )
    profile["_path"] = str(path)
    if profile.get("probes_file"):
        profile["probes_file"] = _probes_beside(path, profile["probes_file"])
    return profile


def _probes_beside(profile_path: Path, stored: str) -> str:
    """The profile's probes file, wherever the profile is read from. It is stored by name, beside the
    profile; profiles written before that hold a path relative to the directory they were made in."""
    stored_path = Path(stored)
    if stored_path.is_absolute():
        return stored
    beside = profile_path.parent / stored_path.name
    for candidate in (profile_path.parent / stored_path, beside, stored_path):
        if candidate.is_file():
            return str(candidate)
    return str(beside)


def check_same_model(profile: dict, identity: str, spec: str) -> None:
    """A profile used with a model (plan re-scoring, ...) must come from that very model."""
    if profile["model"]["identity"] != identity:
        raise NexusError(
            f"profile {profile.get('_path', '')} was made from {profile['model']['spec']} "
            f"(identity {profile['model']['identity'][:12]}), not from {spec} (identity {identity[:12]})"
        )


# -- writing ---------------------------------------------------------------------------------------


def profile_csv(profile: dict) -> str:
    """One row per layer: sensitivity, NLL (and accuracy) per capability, Block Influence."""
    caps = list(profile["capabilities"])
    header = ["layer"]
    for cap in caps:
        header += [f"{cap}_sensitivity", f"{cap}_nll"]
        if profile["capabilities"][cap]["accuracy"] is not None:
            header += [f"{cap}_accuracy", f"{cap}_accuracy_drop"]
        header.append(f"{cap}_block_influence")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for k, layer in enumerate(profile["layers"]):
        row: list = [layer]
        for cap in caps:
            c = profile["capabilities"][cap]
            row += [f"{c['sensitivity'][k]:.6g}", f"{c['nll'][k]:.6g}"]
            if c["accuracy"] is not None:
                row += [f"{c['accuracy'][k]:.6g}", f"{c['accuracy_drop'][k]:.6g}"]
            row.append(f"{c['block_influence'][layer]:.6g}")
        writer.writerow(row)
    return buffer.getvalue()


def top_critical(profile: dict, k: int = 3) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for cap, c in profile["capabilities"].items():
        ranked = sorted(zip(profile["layers"], c["sensitivity"], strict=True), key=lambda p: (-p[1], p[0]))
        out[cap] = [(layer, value) for layer, value in ranked[:k]]
    return out


# -- the phase ---------------------------------------------------------------------------------------


def _load(config: ProfileConfig):
    import torch

    from nexus.hardware import pick_device, resolve_precision
    from nexus.models import count_parameters, decoder_layers, load_model, load_tokenizer

    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model, resolved = load_model(
        config.model, dtype=dtype, device=str(device), trust_remote_code=config.trust_remote_code
    )
    tokenizer = load_tokenizer(resolved, trust_remote_code=config.trust_remote_code)
    layers = decoder_layers(model)
    info = {
        "spec": config.model,
        "kind": resolved.kind,
        "path": resolved.path,
        "identity": model_identity(resolved),
        "architecture": type(model).__name__,
        "num_layers": len(layers),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "parameters": count_parameters(model),
        "layer_parameters": [sum(p.numel() for p in layer.parameters()) for layer in layers],
        "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
        "pruned_from": getattr(model.config, "nexus_student", None),
        "precision": precision,
        "device": str(device),
    }
    return model, tokenizer, info


def _probe_sets(config: ProfileConfig, model, tokenizer, info: dict, compare: dict | None):
    from nexus.profiling.probes import collect_examples, encode_probes

    specs, capabilities = list(config.probes), list(config.capabilities)
    if (
        not specs
        and compare is not None
        and compare.get("probes_file")
        and Path(compare["probes_file"]).is_file()
    ):
        log.info("using the probes of the compared profile: %s", compare["probes_file"])
        specs, capabilities = [compare["probes_file"]], list(compare["capabilities"])

    def answer_chat(examples):
        from nexus.data.builtin import teacher_answers

        if config.chat_answer_model:
            from nexus.models import load_model, load_tokenizer

            answer_model, resolved = load_model(
                config.chat_answer_model, dtype=next(model.parameters()).dtype
            )
            answer_tok = load_tokenizer(resolved)
        else:
            answer_model, answer_tok = model, tokenizer
        log.info("answering %d built-in chat probes with the model's greedy decoding", len(examples))
        return teacher_answers(answer_model, answer_tok, examples, max_new_tokens=config.chat_max_new_tokens)

    chosen, sources = collect_examples(
        capabilities,
        specs,
        num_probes=config.num_probes,
        seed=config.seed,
        offset=config.probe_offset,
        builtin_chat=answer_chat,
    )
    max_tokens = config.max_tokens
    context = info.get("max_position_embeddings")
    if context and max_tokens > context:
        log.warning(
            "max_tokens %d exceeds the model's context (%d): probes are truncated to %d",
            max_tokens,
            context,
            context,
        )
        max_tokens = context
    return [
        encode_probes(cap, examples, tokenizer, max_tokens=max_tokens, sources=sources[cap])
        for cap, examples in chosen.items()
    ]


class ProfilingProgress:
    """The status line of a profiling run: ``writer`` (``results/status.json``) and
    :meth:`on_layer`, the profiler's per-layer hook, which counts layer steps, honours pause and
    raises :class:`~nexus.profiling.profiler.ProfileStopped` at the stop flag."""

    def __init__(self, writer: StatusWriter, callback: KeyboardPauseCallback):
        self.writer, self.callback, self.step = writer, callback, 0

    def on_layer(self, capability: str, layer: int) -> None:
        from nexus.profiling.profiler import ProfileStopped

        self.step += 1
        if self.callback.step_boundary(self.step, units=1) is StepAction.STOP:
            raise ProfileStopped


@contextmanager
def profiling_status(
    results_dir: Path,
    flags: Flags | None,
    printer: StatusPrinter | None,
    *,
    phase: int = 1,
    phase_name: str | None = None,
) -> Iterator[ProfilingProgress]:
    """The :class:`ProfilingProgress` of a profiling run (text or image probes); an exception
    marks the status Failed, and the GPU monitor and the printer stop however the run ends."""
    writer = StatusWriter(
        results_dir,
        phase=phase,
        phase_name=phase_name,
        throughput_unit="layers/s",
        gpu=GpuTemperature().start(),
    )
    callback = KeyboardPauseCallback(writer, flags=flags or Flags(), printer=printer)
    try:
        yield ProfilingProgress(writer, callback)
    except BaseException as exc:
        if writer.state["status"] == "Running":
            writer.set_status("Failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        if writer.gpu is not None:
            writer.gpu.stop()
        if printer is not None:
            printer.finish()


def run_profile(
    config: ProfileConfig,
    *,
    results_dir: Path = Path("results"),
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
    phase: int = 1,
    phase_name: str | None = None,
) -> dict:
    """Profile ``config.model`` and write the outputs under ``results_dir/profile``; returns a
    summary (paths, wall time, baselines, top-3 critical layers, alignment, plan).

    ``phase``/``phase_name`` label the status line (the release profiles the student as phase 5)."""
    from nexus.profiling.engine import Perturbation
    from nexus.profiling.probes import probe_rows
    from nexus.profiling.profiler import ProfileStopped, profile_model

    started = time.monotonic()
    results_dir = Path(results_dir)
    out_dir = results_dir / "profile"
    name = default_name(config)
    compare = load_profile(config.compare) if config.compare else None
    with profiling_status(results_dir, flags, printer, phase=phase, phase_name=phase_name) as progress:
        from nexus.data import load_examples
        from nexus.profiling.probes import parse_probe_specs

        for _, path in parse_probe_specs(config.probes):  # bad probe files fail before the model loads
            load_examples(path)
        model, tokenizer, info = _load(config)
        if config.layers is not None:
            bad = [i for i in config.layers if i >= info["num_layers"]]
            if bad:
                raise NexusError(
                    f"layers {bad} out of range: {config.model} has layers 0..{info['num_layers'] - 1}"
                )
        if config.plan.has_target:
            from nexus.profiling.plan import target_num_layers

            target_num_layers({"model": info}, config.plan)  # a bad target fails before the long run
        probe_sets = _probe_sets(config, model, tokenizer, info, compare)
        layers = sorted(set(config.layers)) if config.layers is not None else list(range(info["num_layers"]))
        total = len(layers) * len(probe_sets)
        progress.writer.update(0, total_steps=total)
        perturbation = Perturbation(config.perturbation, config.noise_scale, config.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        try:
            result = profile_model(
                model,
                probe_sets,
                perturbation=perturbation,
                layers=layers,
                batch_tokens=config.batch_tokens,
                pad_id=pad_id,
                on_layer=progress.on_layer,
            )
        except ProfileStopped:
            log.info(
                "profiling stopped by the stop flag after %d of %d layer steps; no profile written",
                progress.step,
                total,
            )
            return {"stopped": True, "steps_done": progress.step, "total_steps": total}

        wall = time.monotonic() - started
        out_dir.mkdir(parents=True, exist_ok=True)
        probes_path = out_dir / f"{name}_probes.jsonl"
        atomic_write_text(
            probes_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in probe_rows(probe_sets))
        )
        profile = {
            "format": PROFILE_FORMAT,
            "version": 1,
            "name": name,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model": info,
            "perturbation": config.perturbation,
            "layers": result["layers"],
            "capabilities": result["capabilities"],
            "probes": {cap: c["sha256"] for cap, c in result["capabilities"].items()},
            "probes_file": probes_path.name,  # beside the profile: read it from anywhere
            "wall_seconds": round(wall, 2),
            "config": to_dict(config),
        }
        profile_path = out_dir / f"{name}.json"
        atomic_write_json(profile_path, profile)
        atomic_write_text(out_dir / f"{name}.csv", profile_csv(profile))
        save_resolved(config, out_dir, name=f"{name}_config.yaml")
        summary = {
            "profile": str(profile_path),
            "csv": str(out_dir / f"{name}.csv"),
            "wall_seconds": round(wall, 2),
            "baseline": {cap: c["baseline"] for cap, c in profile["capabilities"].items()},
            "top_critical": top_critical(profile),
        }
        if compare is not None:
            summary.update(_compare(profile, compare, out_dir, name, config.alignment_threshold))
        else:
            summary["heatmap"] = str(plot_heatmap([profile], out_dir / f"{name}.png", titles=[name]))
        if config.plan.has_target:
            profile["_path"] = str(profile_path)
            plan = plan_from_profile(profile, config.plan, model=model, probe_sets=probe_sets, config=config)
            summary["plan"] = str(save_plan(plan, out_dir / PLAN_FILE))
            summary["keep_layers"] = plan["keep_layers"]
        progress.writer.set_status("Completed")
        return summary


def _compare(profile: dict, other: dict, out_dir: Path, name: str, threshold: float) -> dict:
    """Alignment of ``profile`` with ``other``; the student is the pruned one (or the shallower)."""
    mine, theirs = profile["model"], other["model"]
    if mine.get("pruned_from") and not theirs.get("pruned_from"):
        teacher, student = other, profile
    elif (theirs.get("pruned_from") and not mine.get("pruned_from")) or mine["num_layers"] > theirs[
        "num_layers"
    ]:
        teacher, student = profile, other
    else:
        teacher, student = other, profile
    keep = (student["model"].get("pruned_from") or {}).get("keep_layers")
    layer_map = default_layer_map(teacher["model"]["num_layers"], student["model"]["num_layers"], keep)
    result = alignment(teacher, student, layer_map, threshold=threshold)
    result["teacher"] = teacher.get("name")
    result["student"] = student.get("name")
    path = out_dir / f"{name}_alignment.json"
    atomic_write_json(path, result)
    heatmap = plot_heatmap(
        [teacher, student],
        out_dir / f"{name}.png",
        titles=[f"teacher: {teacher['name']}", f"student: {student['name']}"],
    )
    return {"alignment": result, "alignment_file": str(path), "heatmap": str(heatmap)}


def plan_from_profile(
    profile: dict, plan_config: PlanConfig, *, model=None, probe_sets=None, config=None
) -> dict:
    """``make_plan`` with a re-scorer that profiles the partly pruned teacher (when asked for)."""
    rescorer = None
    if plan_config.rescore_every:
        if model is None or probe_sets is None:
            raise NexusError("plan.rescore_every needs the teacher model and its probes")
        from nexus.config import from_dict
        from nexus.models import build_student
        from nexus.profiling.engine import Perturbation
        from nexus.profiling.plan import layer_importance
        from nexus.profiling.profiler import profile_model

        cfg = config or from_dict(ProfileConfig, profile["config"], f"{profile.get('_path')} (config)")

        def rescorer(keep: list[int]) -> dict[int, float]:
            student = build_student(model, keep)
            result = profile_model(
                student,
                probe_sets,
                perturbation=Perturbation(cfg.perturbation, cfg.noise_scale, cfg.seed),
                batch_tokens=cfg.batch_tokens,
            )
            scores = layer_importance(result, plan_config.aggregate, plan_config.criterion)
            return {keep[s]: v for s, v in scores.items()}

    return make_plan(profile, plan_config, rescorer=rescorer, profile_path=profile.get("_path"))
