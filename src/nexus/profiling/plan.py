"""The profile-guided student: which teacher layers to keep and which to anchor.

``make_plan`` removes the least important layer (importance = the layer's removal sensitivity
combined over capabilities) one at a time until the target is met, optionally re-scoring the
remaining layers on the partly pruned teacher after every ``rescore_every`` removals (a layer's
importance depends on which others are still there). The first and last layers can be
protected, and so can every layer whose removal alone costs some capability more than
``protect_above`` (a relative loss increase): a capability that hangs on one layer, as reading
retrieved context does on one middle layer of SmolLM2 (docs/pipeline.md), keeps it whatever the
criterion says. ``critical_layers`` are the most sensitive teacher layers per capability; the kept
ones become ``anchor_pairs`` ``[student_layer, teacher_layer]`` for ActivationAnchoringLoss.

``student_plan.json`` is consumed by ``nexus.models.build_student(teacher, plan["keep_layers"])``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from nexus.config import to_dict
from nexus.errors import NexusError
from nexus.models.depth import depth_in_layers
from nexus.profiling.config import PlanConfig
from nexus.utils import atomic_write_json

log = logging.getLogger(__name__)

PLAN_FORMAT = "nexus-student-plan"
PLAN_FILE = "student_plan.json"

Rescorer = Callable[[list[int]], dict[int, float]]


def layer_importance(
    profile: dict, aggregate: str = "mean", criterion: str = "sensitivity"
) -> dict[int, float]:
    """Teacher layer -> importance: its ``criterion`` (removal sensitivity or Block Influence)
    over capabilities, combined by mean or max."""
    caps = profile["capabilities"]
    if not caps:
        raise NexusError("profile has no capabilities")
    if criterion not in ("sensitivity", "block_influence"):
        raise NexusError(f"plan criterion must be sensitivity or block_influence, not {criterion!r}")
    values = [caps[name][criterion] for name in caps]
    combine = max if aggregate == "max" else (lambda xs: sum(xs) / len(xs))
    return {layer: combine([v[k] for v in values]) for k, layer in enumerate(profile["layers"])}


def sensitive_layers(profile: dict, above: float) -> list[int]:
    """Layers whose removal alone raises some capability's probe loss by more than ``above``."""
    caps = profile["capabilities"].values()
    return [
        layer
        for k, layer in enumerate(profile["layers"])
        if any(cap["sensitivity"][k] > above for cap in caps)
    ]


def critical_layers(profile: dict, per_capability: int) -> dict[str, list[int]]:
    """The ``per_capability`` most sensitive layers of each capability, most sensitive first."""
    result = {}
    for name, cap in profile["capabilities"].items():
        ranked = sorted(zip(cap["sensitivity"], profile["layers"], strict=True), key=lambda p: (-p[0], p[1]))
        result[name] = [layer for _, layer in ranked[:per_capability]]
    return result


def target_num_layers(profile: dict, config: PlanConfig) -> int:
    """The number of layers the student keeps, from ``keep_layers`` or ``param_budget``."""
    model = profile["model"]
    n = model["num_layers"]
    if config.keep_layers is not None:
        if isinstance(config.keep_layers, int) and config.keep_layers > n:
            raise NexusError(
                f"plan target of {config.keep_layers} layers is larger than the teacher ({n} layers)"
            )
        return depth_in_layers(config.keep_layers, n, "plan.keep_layers")
    if config.param_budget is None:
        raise NexusError("a plan needs a target: keep_layers or param_budget")
    per_layer = model["layer_parameters"]
    fixed = model["parameters"] - sum(per_layer)
    if config.param_budget >= model["parameters"]:
        raise NexusError(
            f"parameter budget {config.param_budget:,} is not smaller than the teacher ({model['parameters']:,})"
        )
    # Layers of one model have (nearly) equal size: keep as many of the average size as fit.
    average = sum(per_layer) / n
    keep = int((config.param_budget - fixed) // average)
    if keep < 1:
        raise NexusError(
            f"parameter budget {config.param_budget:,} does not fit the embeddings, head and one layer "
            f"({fixed + average:,.0f} parameters)"
        )
    return keep


def select_layers(
    importance: dict[int, float],
    num_layers: int,
    target: int,
    *,
    protected: Sequence[int] = (),
    rescore_every: int = 0,
    rescorer: Rescorer | None = None,
) -> tuple[list[int], list[dict]]:
    """Iteratively drop the least important unprotected layer until ``target`` remain.

    Returns the kept layers (sorted) and the removal log ``[{"layer", "importance"}, ...]``.
    With ``rescore_every = k > 0`` and a ``rescorer``, the importance of the remaining layers
    is recomputed (``rescorer(kept_layers)``) after every k removals.
    """
    keep = list(range(num_layers))
    protected_set = set(protected)
    if target < len(protected_set):
        raise NexusError(
            f"plan target of {target} layers is smaller than the protected layers {sorted(protected_set)}: "
            "keep more layers, or raise plan.protect_above"
        )
    scores = dict(importance)
    missing = [i for i in keep if i not in scores and i not in protected_set]
    if missing and target < num_layers:
        raise NexusError(f"the profile does not cover layers {missing}: profile all layers to plan a student")
    removals = []
    since_rescore = 0
    while len(keep) > target:
        candidates = [i for i in keep if i not in protected_set]
        victim = min(candidates, key=lambda i: (scores[i], i))
        removals.append({"layer": victim, "importance": scores[victim]})
        keep.remove(victim)
        since_rescore += 1
        if rescorer is not None and rescore_every and since_rescore == rescore_every and len(keep) > target:
            log.info(
                "re-scoring %d remaining layers after removing %s", len(keep), [r["layer"] for r in removals]
            )
            scores.update(rescorer(list(keep)))
            since_rescore = 0
    return keep, removals


def make_plan(
    profile: dict,
    config: PlanConfig,
    *,
    rescorer: Rescorer | None = None,
    profile_path: str | None = None,
) -> dict:
    """The student plan (see the module docstring) for a teacher ``profile``."""
    n = profile["model"]["num_layers"]
    target = target_num_layers(profile, config)
    protected = [i for i, flag in ((0, config.protect_first), (n - 1, config.protect_last)) if flag]
    if config.protect_above is not None:
        protected += sensitive_layers(profile, config.protect_above)
    protected = sorted(set(protected)) if target < n else []
    if config.rescore_every and rescorer is None:
        raise NexusError(
            "plan.rescore_every needs the teacher and probes to re-score (run through nexus profile/plan)"
        )
    importance = layer_importance(profile, config.aggregate, config.criterion)
    keep, removals = select_layers(
        importance, n, target, protected=protected, rescore_every=config.rescore_every, rescorer=rescorer
    )
    critical = critical_layers(profile, config.critical_per_capability)
    student_of = {t: s for s, t in enumerate(keep)}
    anchors = sorted({(student_of[t], t) for layers in critical.values() for t in layers if t in student_of})
    model = profile["model"]
    per_layer = model.get("layer_parameters")
    params = None
    if per_layer:
        params = model["parameters"] - sum(per_layer) + sum(per_layer[i] for i in keep)
    return {
        "format": PLAN_FORMAT,
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "teacher": {
            "spec": model["spec"],
            "identity": model["identity"],
            "architecture": model.get("architecture"),
        },
        "teacher_num_layers": n,
        "keep_layers": keep,
        "removed_layers": sorted(set(range(n)) - set(keep)),
        "layer_map": {str(s): t for s, t in enumerate(keep)},
        "critical_layers": critical,
        "anchor_pairs": [[s, t] for s, t in anchors],
        "importance": {str(k): v for k, v in sorted(importance.items())},
        "removal_order": removals,
        "protected_layers": protected,
        "student_parameters": params,
        "profile": {
            "path": profile_path,
            "perturbation": profile.get("perturbation"),
            "probes": profile.get("probes"),
        },
        "config": to_dict(config),
    }


def save_plan(plan: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_json(path, plan)
    return path


def load_plan(path: str | Path, *, teacher_num_layers: int | None = None) -> dict:
    """Read and validate ``student_plan.json``; ``layer_map`` comes back with int keys."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NexusError(f"student plan not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NexusError(f"{path}: not a valid student plan (bad JSON: {exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise NexusError(f"{path}: not a Nexus student plan (format is not '{PLAN_FORMAT}')")
    for key in (
        "teacher",
        "teacher_num_layers",
        "keep_layers",
        "layer_map",
        "critical_layers",
        "anchor_pairs",
    ):
        if key not in plan:
            raise NexusError(f"{path}: student plan is missing '{key}'")
    n, keep = plan["teacher_num_layers"], plan["keep_layers"]
    if not isinstance(n, int) or n < 1:
        raise NexusError(f"{path}: teacher_num_layers must be a positive integer")
    if teacher_num_layers is not None and n != teacher_num_layers:
        raise NexusError(
            f"{path}: plan is for a teacher with {n} layers, this teacher has {teacher_num_layers}"
        )
    if (
        not isinstance(keep, list)
        or not keep
        or not all(isinstance(i, int) and 0 <= i < n for i in keep)
        or keep != sorted(set(keep))
    ):
        raise NexusError(
            f"{path}: keep_layers must be distinct increasing teacher layer indices in 0..{n - 1}"
        )
    try:
        layer_map = {int(s): int(t) for s, t in plan["layer_map"].items()}
    except (AttributeError, TypeError, ValueError):
        raise NexusError(
            f"{path}: layer_map must map student layer indices to teacher layer indices"
        ) from None
    if layer_map != dict(enumerate(keep)):
        raise NexusError(f"{path}: layer_map does not match keep_layers")
    for pair in plan["anchor_pairs"]:
        if not (isinstance(pair, list) and len(pair) == 2 and layer_map.get(pair[0]) == pair[1]):
            raise NexusError(
                f"{path}: anchor pair {pair} is not [student_layer, teacher_layer] of a kept layer"
            )
    for name, layers in plan["critical_layers"].items():
        if not all(isinstance(i, int) and 0 <= i < n for i in layers):
            raise NexusError(f"{path}: critical layers of '{name}' are not teacher layer indices")
    plan["layer_map"] = layer_map
    return plan
