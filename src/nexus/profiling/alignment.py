"""Structural alignment (usage guide 5B): does the student lose a capability where the teacher does?

Given two profiles and a layer map (student layer -> teacher layer), per capability:

* ``spearman``: rank correlation of the student's sensitivities with the teacher's at the
  mapped layers (None when undefined, e.g. a constant side);
* the guide's criterion as a confusion table: the teacher "loses X at layer Y" when its
  sensitivity there exceeds ``threshold``; does the student lose X at the mapped Y'?
  ``agreement`` = (both lose + neither loses) / mapped layers;
* ``score`` = mean of the defined values among ``spearman`` and ``agreement``.

``overall`` is the mean score over the capabilities both profiles share: 1.0 for a profile
compared with itself. Works for any pair of profiles, not only Nexus students.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from nexus.errors import NexusError
from nexus.profiling.metrics import spearman

log = logging.getLogger(__name__)


def default_layer_map(
    teacher_layers: int, student_layers: int, keep_layers: Sequence[int] | None = None
) -> dict[int, int]:
    """The student's keep-list when known; else identity for equal depths; else proportional depth."""
    if keep_layers is not None and len(keep_layers) == student_layers:
        return {s: int(t) for s, t in enumerate(keep_layers)}
    if teacher_layers == student_layers:
        return {i: i for i in range(student_layers)}
    if student_layers == 1:
        return {0: teacher_layers - 1}
    return {s: round(s * (teacher_layers - 1) / (student_layers - 1)) for s in range(student_layers)}


def alignment(
    teacher_profile: dict,
    student_profile: dict,
    layer_map: Mapping[int, int] | Sequence[int],
    *,
    threshold: float = 0.1,
) -> dict:
    """Per-capability Spearman and confusion table, and one overall score (module docstring)."""
    if not isinstance(layer_map, Mapping):
        layer_map = dict(enumerate(layer_map))
    layer_map = {int(s): int(t) for s, t in layer_map.items()}
    t_index = {layer: k for k, layer in enumerate(teacher_profile["layers"])}
    s_index = {layer: k for k, layer in enumerate(student_profile["layers"])}
    pairs = [(s, t) for s, t in sorted(layer_map.items()) if s in s_index and t in t_index]
    if not pairs:
        raise NexusError("no mapped layer was profiled in both profiles: cannot compute alignment")
    shared = [c for c in teacher_profile["capabilities"] if c in student_profile["capabilities"]]
    if not shared:
        raise NexusError("the two profiles share no capability")
    per_cap = {}
    for cap in shared:
        t_sens = teacher_profile["capabilities"][cap]["sensitivity"]
        s_sens = student_profile["capabilities"][cap]["sensitivity"]
        tv = [t_sens[t_index[t]] for _, t in pairs]
        sv = [s_sens[s_index[s]] for s, _ in pairs]
        table = {"both": 0, "teacher_only": 0, "student_only": 0, "neither": 0}
        for a, b in zip(tv, sv, strict=True):
            key = (
                ("both" if b > threshold else "teacher_only")
                if a > threshold
                else ("student_only" if b > threshold else "neither")
            )
            table[key] += 1
        rho = spearman(tv, sv)
        agreement = (table["both"] + table["neither"]) / len(pairs)
        parts = [x for x in (rho, agreement) if x is not None]
        same = teacher_profile["capabilities"][cap].get("sha256") == student_profile["capabilities"][cap].get(
            "sha256"
        )
        if not same:
            log.warning("capability '%s': the two profiles used different probes", cap)
        per_cap[cap] = {
            "spearman": rho,
            "confusion": table,
            "agreement": agreement,
            "score": sum(parts) / len(parts),
            "same_probes": same,
        }
    return {
        "threshold": threshold,
        "layer_map": {str(s): t for s, t in pairs},
        "capabilities": per_cap,
        "overall": sum(c["score"] for c in per_cap.values()) / len(per_cap),
    }
