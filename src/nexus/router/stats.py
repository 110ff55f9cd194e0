"""Routing observability: per-layer router entropy, expert load per domain, collapse warnings, PNG.

:class:`RoutingStats` accumulates, for every MoE layer, how many top-k slots each expert got
from tokens of each domain, the batch-mean routing distribution and the mean per-token entropy.
Entropies are normalized by ``log E`` (1 = uniform, 0 = one expert).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nexus.router.losses import entropy


class RoutingStats:
    """Accumulates routing decisions of ``len(layers)`` MoE layers.

    ``domains`` names the domain indices of ``token_domains``; tokens with index -1 (or out of
    range) are counted under ``other`` so the totals still add up.
    """

    def __init__(self, layers: Sequence[int], num_experts: int, top_k: int, domains: Sequence[str]) -> None:
        self.layers = list(layers)
        self.num_experts = num_experts
        self.top_k = top_k
        self.domains = [*domains, "other"]
        n_layers, n_dom = len(self.layers), len(self.domains)
        self.counts = torch.zeros(n_layers, n_dom, num_experts, dtype=torch.float64)  # top-k slots
        self.prob_sum = torch.zeros(n_layers, num_experts, dtype=torch.float64)
        self.token_entropy_sum = torch.zeros(n_layers, dtype=torch.float64)
        self.tokens = 0

    @torch.no_grad()
    def update(
        self,
        router_logits: Sequence[torch.Tensor],
        token_domains: torch.Tensor,
        token_mask: torch.Tensor | None = None,
    ) -> None:
        """router_logits: per layer (T, E); token_domains: (T,) domain index; token_mask: (T,) bool."""
        if len(router_logits) != len(self.layers):
            raise ValueError(
                f"got router logits for {len(router_logits)} layers, expected {len(self.layers)}"
            )
        doms = token_domains.reshape(-1).cpu().long()
        mask = (
            torch.ones_like(doms, dtype=torch.bool)
            if token_mask is None
            else token_mask.reshape(-1).cpu().bool()
        )
        other = len(self.domains) - 1
        doms = torch.where((doms < 0) | (doms >= other), torch.full_like(doms, other), doms)[mask]
        for li, logits in enumerate(router_logits):
            probs = logits.detach().float().cpu()[mask].softmax(dim=-1)  # (T, E)
            chosen = probs.topk(self.top_k, dim=-1).indices  # (T, k)
            flat = (doms[:, None] * self.num_experts + chosen).reshape(-1)
            self.counts[li] += torch.bincount(flat, minlength=len(self.domains) * self.num_experts).view(
                len(self.domains), self.num_experts
            )
            self.prob_sum[li] += probs.sum(dim=0).double()
            self.token_entropy_sum[li] += entropy(probs).sum().double()
        self.tokens += int(mask.sum())

    # -- summaries -------------------------------------------------------------------------
    def load(self, layer_index: int | None = None) -> torch.Tensor:
        """(domains, E) share of each domain's top-k slots per expert (rows sum to 1; layers pooled
        when ``layer_index`` is None). Rows of domains with no tokens are 0."""
        counts = self.counts.sum(dim=0) if layer_index is None else self.counts[layer_index]
        return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)

    def expert_share(self) -> torch.Tensor:
        """(layers, E) share of all top-k slots taken by each expert."""
        totals = self.counts.sum(dim=1)
        return totals / totals.sum(dim=1, keepdim=True).clamp_min(1)

    def mean_distribution_entropy(self) -> torch.Tensor:
        """(layers,) ``H(p̄)/log E`` of the mean routing distribution (1 = all experts used equally)."""
        mean = self.prob_sum / max(self.tokens, 1)
        return entropy(mean) / math.log(self.num_experts)

    def token_entropy(self) -> torch.Tensor:
        """(layers,) mean per-token ``H(p_t)/log E`` (0 = every token routes decisively)."""
        return self.token_entropy_sum / max(self.tokens, 1) / math.log(self.num_experts)

    def collapse_warnings(self, threshold: float) -> list[str]:
        """One line per layer where a single expert takes more than ``threshold`` of the slots."""
        warnings = []
        for li, share in enumerate(self.expert_share()):
            top = int(share.argmax())
            if self.tokens and share[top] > threshold:
                warnings.append(
                    f"router collapse in layer {self.layers[li]}: expert {top} takes {share[top]:.0%} of tokens "
                    f"(threshold {threshold:.0%})"
                )
        return warnings

    def used_domains(self) -> list[int]:
        return [d for d in range(len(self.domains)) if self.counts[:, d].sum() > 0]

    def load_table(self, expert_names: Sequence[str] | None = None, layer_index: int | None = None) -> str:
        """Markdown table: one row per domain seen, one column per expert, cells = share of slots."""
        names = list(expert_names or [f"e{i}" for i in range(self.num_experts)])
        load = self.load(layer_index)
        lines = ["| domain | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        for d in self.used_domains():
            lines.append(f"| {self.domains[d]} | " + " | ".join(f"{v:.1%}" for v in load[d].tolist()) + " |")
        return "\n".join(lines)

    def entropy_table(self) -> str:
        """Markdown table: per layer, H(mean routing)/log E, mean token entropy, max expert share."""
        lines = [
            "| layer | H(p̄)/log E | mean H(p_t)/log E | max expert share |",
            "| ---: | ---: | ---: | ---: |",
        ]
        shares = self.expert_share()
        for li, (h_mean, h_tok) in enumerate(
            zip(self.mean_distribution_entropy(), self.token_entropy(), strict=True)
        ):
            lines.append(f"| {self.layers[li]} | {h_mean:.3f} | {h_tok:.3f} | {shares[li].max():.1%} |")
        return "\n".join(lines)

    def summary(self, collapse_threshold: float) -> dict[str, Any]:
        """JSON-ready summary (per layer and pooled)."""
        return {
            "tokens": self.tokens,
            "layers": self.layers,
            "domains": [self.domains[d] for d in self.used_domains()],
            "load_per_domain": {self.domains[d]: self.load()[d].tolist() for d in self.used_domains()},
            "expert_share_per_layer": self.expert_share().tolist(),
            "mean_distribution_entropy": self.mean_distribution_entropy().tolist(),
            "token_entropy": self.token_entropy().tolist(),
            "mean_entropy": float(self.mean_distribution_entropy().mean()) if self.layers else None,
            "collapse_warnings": self.collapse_warnings(collapse_threshold),
        }

    def save_png(self, path: str | Path, expert_names: Sequence[str] | None = None, title: str = "") -> Path:
        """Heatmaps of load per domain per expert: all layers pooled, then each layer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        names = list(expert_names or [f"e{i}" for i in range(self.num_experts)])
        doms = self.used_domains() or list(range(len(self.domains)))
        panels = [None, *range(len(self.layers))]
        cols = min(6, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(2.6 * cols, 0.5 * len(doms) * rows + 1.2 * rows), squeeze=False
        )
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax, layer in zip(axes.flat, panels, strict=False):
            load = self.load(layer)[doms].numpy()
            ax.imshow(load, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_title("all layers" if layer is None else f"layer {self.layers[layer]}", fontsize=8)
            ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
            ax.set_yticks(range(len(doms)), [self.domains[d] for d in doms], fontsize=7)
            for (r, c), v in np.ndenumerate(load):
                ax.text(c, r, f"{v:.0%}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        fig.suptitle(title or "expert load per domain (share of top-k slots)", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
