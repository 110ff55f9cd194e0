"""Phase 1 for a vision-language teacher: NIWT sensitivity of the language tower on
image-conditioned probes, per capability, and the student plan.

The probes are multiple-choice image questions (the synthetic corpus' dev split, or a user's rows
that have ``choices``; other user rows are scored on their response). Each choice is one probe
sequence carrying its picture and what the processor gives with it (``EncodedProbe.inputs``), so the text profiler
(:func:`nexus.profiling.profiler.profile_model`: one clean pass, then each layer removed from
the cached layer inputs) runs unchanged on the language tower; the plan, the heatmap and the
profile file are the text phase's (:func:`nexus.profiling.plan.make_plan`).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.config import save_resolved, to_dict
from nexus.data.formats import Example
from nexus.monitor import Flags, StatusPrinter
from nexus.multimodal.config import VisionProfileConfig
from nexus.multimodal.synthetic import VisionExample
from nexus.utils import atomic_write_json

log = logging.getLogger(__name__)

PROFILE_NAME = "teacher"


def encode_probe_set(processor, name: str, examples: list[VisionExample]):
    """A :class:`~nexus.profiling.probes.ProbeSet` of image questions (one sequence per choice)."""
    from nexus.multimodal.vlm import TEXT_KEYS, encode
    from nexus.profiling.probes import EncodedProbe, ProbeSet

    sequences, labels, rows = [], {}, []
    for index, example in enumerate(examples):
        answers = example.choices or [example.response]
        for choice, answer in enumerate(answers):
            batch = encode(processor, [example], [answer])
            labels_row = batch["labels"][0]
            score = [False] + (labels_row[:-1] != -100).tolist()
            sequences.append(
                EncodedProbe(
                    batch["input_ids"][0].tolist(),
                    score,
                    index,
                    choice if example.choices else -1,
                    inputs={k: v for k, v in batch.items() if k not in TEXT_KEYS},
                )
            )
        if example.choices:
            labels[index] = example.label
        rows.append(
            Example(
                "chat",
                example.source,
                name,
                prompt=f"[{', '.join(example.image_names)}] {example.prompt}",
                response=example.response,
            )
        )
    return ProbeSet(
        name, rows, sequences, sources=sorted({e.source.split(":")[0] for e in examples}), labels=labels
    )


def probe_examples(config: VisionProfileConfig) -> dict[str, list[VisionExample]]:
    """Probe questions per capability: synthetic dev pictures, or the user's rows by capability."""
    from nexus.multimodal.data import SYNTHETIC, load_image_rows
    from nexus.multimodal.synthetic import CAPABILITIES, synthetic_examples

    if config.data == SYNTHETIC:
        rows = synthetic_examples(
            "dev",
            config.num_probes * len(CAPABILITIES),
            seed=config.seed,
            size=config.image_size,
            offset=10_000,
        )
    else:
        rows = load_image_rows(config.data)
    groups: dict[str, list[VisionExample]] = {}
    for row in rows:
        if len(groups.setdefault(row.capability, [])) < config.num_probes:
            groups[row.capability].append(row)
    return groups


def run_vision_profile(
    config: VisionProfileConfig,
    *,
    results_dir: Path,
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Profile the teacher's language tower; writes ``results/mm_profile/`` (profile JSON, CSV,
    heatmap, ``student_plan.json``) and returns the summary."""
    from nexus.hardware import pick_device
    from nexus.models import count_parameters, decoder_layers
    from nexus.multimodal.vlm import evaluate_accuracy, load_vlm
    from nexus.profiling.engine import Perturbation
    from nexus.profiling.heatmap import plot_heatmap
    from nexus.profiling.phase import profile_csv, profiling_status, top_critical
    from nexus.profiling.plan import PLAN_FILE, make_plan, save_plan, target_num_layers
    from nexus.profiling.profiler import ProfileStopped, profile_model

    started = time.monotonic()
    out_dir = Path(results_dir) / "mm_profile"
    device = pick_device(config.device)
    with profiling_status(results_dir, flags, printer) as progress:
        model, processor, path = load_vlm(config.model, device=str(device))
        layers = decoder_layers(model)
        info = {
            "spec": config.model,
            "path": path,
            "identity": path,
            "architecture": type(model).__name__,
            "num_layers": len(layers),
            "parameters": count_parameters(model),
            "layer_parameters": [sum(p.numel() for p in layer.parameters()) for layer in layers],
            "device": str(device),
        }
        target_num_layers({"model": info}, config.plan)  # a bad target fails before the long run
        groups = probe_examples(config)
        probe_sets = [encode_probe_set(processor, name, rows) for name, rows in groups.items()]
        total = len(layers) * len(probe_sets)
        progress.writer.update(0, total_steps=total)
        try:
            result = profile_model(
                model,
                probe_sets,
                perturbation=Perturbation(config.perturbation, config.noise_scale, config.seed),
                batch_tokens=config.batch_tokens,
                pad_id=processor.tokenizer.pad_token_id or 0,
                on_layer=progress.on_layer,
            )
        except ProfileStopped:
            return {"stopped": True, "steps_done": progress.step, "total_steps": total}
        out_dir.mkdir(parents=True, exist_ok=True)
        profile = {
            "format": "nexus-profile",
            "version": 1,
            "name": PROFILE_NAME,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model": info,
            "perturbation": config.perturbation,
            "layers": result["layers"],
            "capabilities": result["capabilities"],
            "probes": {cap: c["sha256"] for cap, c in result["capabilities"].items()},
            "wall_seconds": round(time.monotonic() - started, 2),
            "config": to_dict(config),
        }
        profile_path = out_dir / f"{PROFILE_NAME}.json"
        atomic_write_json(profile_path, profile)
        (out_dir / f"{PROFILE_NAME}.csv").write_text(profile_csv(profile))
        heatmap = plot_heatmap(
            [profile], out_dir / f"{PROFILE_NAME}.png", titles=["teacher (language tower)"]
        )
        plan = make_plan(profile, config.plan, profile_path=str(profile_path))
        plan_path = save_plan(plan, out_dir / PLAN_FILE)
        save_resolved(config, out_dir)
        # the teacher's own accuracy: the bar the student is measured against
        from nexus.multimodal.data import accuracy_examples

        accuracy = evaluate_accuracy(model, processor, accuracy_examples(config))
        atomic_write_json(out_dir / "teacher_accuracy.json", accuracy)
        progress.writer.set_status("Completed")
        return {
            "profile": str(profile_path),
            "heatmap": str(heatmap),
            "plan": str(plan_path),
            "keep_layers": plan["keep_layers"],
            "anchor_pairs": plan["anchor_pairs"],
            "top_critical": top_critical(profile),
            "baseline": {cap: c["baseline"] for cap, c in profile["capabilities"].items()},
            "teacher_accuracy": {k: accuracy[k] for k in ("n", "multiple_choice", "exact_match")},
            "wall_seconds": round(time.monotonic() - started, 2),
        }


def load_teacher_accuracy(results_dir: Path) -> dict[str, Any] | None:
    path = Path(results_dir) / "mm_profile" / "teacher_accuracy.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
