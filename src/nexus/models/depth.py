"""Student depths: a layer count, or a share of the teacher's layers (no torch import: configs use it).

The defaults are shares -- 2/3 of the teacher -- so one config fits teachers of any depth.
"""

from __future__ import annotations

import math

from nexus.errors import NexusError

DEFAULT_SHARE = 0.6667  # 2/3: 20 of SmolLM2-135M's 30 layers, 12 of Gemma 3 270M's 18


def depth_in_layers(depth: int | float, num_layers: int, what: str = "student_layers") -> int:
    """A student depth as a layer count: an ``int`` is a count, a ``float`` in (0, 1] a share of
    the teacher's ``num_layers`` (rounded half up), so one default fits teachers of any depth:
    2/3 keeps 20 of SmolLM2's 30 layers and 12 of Gemma 3 270M's 18."""
    problem = depth_problem(depth, what)
    if problem:
        raise NexusError(problem)
    if isinstance(depth, float):
        return max(1, math.floor(depth * num_layers + 0.5))
    if depth > num_layers:
        raise NexusError(f"{what} must be between 1 and the teacher's {num_layers} layers, got {depth}")
    return depth


def depth_problem(depth: int | float, what: str) -> str | None:
    """Why ``depth`` fits no teacher, or None (configs check it when they are read)."""
    if isinstance(depth, bool) or not isinstance(depth, int | float):
        return f"{what} must be a layer count or a share of the teacher's layers, got {depth!r}"
    if isinstance(depth, float) and not 0.0 < depth <= 1.0:
        return (
            f"{what} as a share of the teacher's layers must be in (0, 1], got {depth} "
            "(give a layer count as an integer)"
        )
    if isinstance(depth, int) and depth < 1:
        return f"{what} must be at least 1, got {depth}"
    return None
