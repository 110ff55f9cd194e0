"""Heatmaps of profiles: layers x capabilities, one panel per profile, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def profile_matrix(profile: dict, value: str = "sensitivity") -> tuple[np.ndarray, list[int], list[str]]:
    """(layers, capabilities) matrix of ``value`` (``sensitivity``, ``nll``, ``block_influence``,
    ``accuracy_drop``; missing entries NaN), the layer indices and the capability names."""
    caps = list(profile["capabilities"])
    layers = (
        list(profile["layers"]) if value != "block_influence" else list(range(profile["model"]["num_layers"]))
    )
    matrix = np.full((len(layers), len(caps)), np.nan)
    for j, cap in enumerate(caps):
        column = profile["capabilities"][cap].get(value)
        if column is not None:
            matrix[:, j] = column
    return matrix, layers, caps


def plot_heatmap(
    profiles: Sequence[dict],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    value: str = "sensitivity",
) -> Path:
    """Write a PNG with one heatmap per profile (e.g. teacher and student side by side).

    Each panel has its own (symmetric-log) colour scale: a shallower student is more sensitive
    everywhere, and what is compared is where the hot layers are.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    titles = list(titles) if titles is not None else [p["model"]["spec"] for p in profiles]
    max_layers = max(len(profile_matrix(p, value)[1]) for p in profiles)
    fig, axes = plt.subplots(
        1, len(profiles), figsize=(2.2 + 2.6 * len(profiles), 1.5 + 0.22 * max_layers), squeeze=False
    )
    for ax, profile, title in zip(axes[0], profiles, titles, strict=True):
        matrix, layers, caps = profile_matrix(profile, value)
        # Symmetric-log colours: the first layers often cost 10x more than the rest, which a
        # linear scale would paint all black.
        finite = matrix[np.isfinite(matrix)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = SymLogNorm(linthresh=0.05, vmin=min(vmin, 0.0), vmax=max(vmax, 1e-6))
        image = ax.imshow(matrix, aspect="auto", cmap="magma", interpolation="nearest", norm=norm)
        ax.set_xticks(range(len(caps)), caps)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label=value.replace("_", " "), fraction=0.08)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
