"""The router's extra loss for the shared training loop, and routing reports on held-out rows.

:class:`RouterObjective` is the ``extra_loss`` hook of :class:`nexus.trainer.loop.Trainer`:
it reads the router logits (one ``(B*T, E)`` tensor per MoE layer, in layer order) that
:class:`RouterLogits` took from the routers during the forward, and returns

    lb_weight * load_balancing + z_weight * z_loss + beta_entropy * balance
    + beta_sharpness * sharpness + [step < domain_warmup_steps] * domain_weight * domain_CE

plus each term as a metric (and ``router_entropy``, the normalized entropy of the top-k load), all over real tokens
(packing padding excluded).

The logits are captured with forward hooks on the routers rather than read from the model
output (``output_router_logits=True``): a vision-language model's output drops them (LLaVA's
output class has no ``router_logits``), while the routers of its language tower are the same
modules as a text MoE's, so one capture serves text and vision-language students.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nexus.router.losses import (
    beta_entropy_terms,
    load_balancing_loss,
    router_domain_loss,
    router_z_loss,
)
from nexus.router.stats import RoutingStats


class RouterLogits:
    """Forward hooks on the routers (``mlp.gate``) of the expert layers of ``model`` (a routed
    text model or a vision-language model with a routed language tower): after a forward,
    :meth:`pop` gives each expert layer's ``(B*T, E)`` router logits in layer order, what
    transformers returns as ``router_logits``. Every forward of the decoder stack starts a new
    list (evaluation forwards and gradient-checkpointing recomputations leave nothing stale)."""

    def __init__(self, model, layers: Sequence[int]):
        from nexus.models import decoder_layers

        blocks = decoder_layers(model)
        stack = next(m for m in model.modules() if getattr(m, "layers", None) is blocks)
        self.logits: list[torch.Tensor] = []
        self.handles = [stack.register_forward_pre_hook(lambda _m, _a: self.logits.clear())]
        for i in layers:
            gate = getattr(blocks[i].mlp, "gate", None)
            if gate is None:
                raise ValueError(f"layer {i} has no router (mlp.gate): it is not an expert layer")
            self.handles.append(gate.register_forward_hook(self._hook))

    def _hook(self, _module, _inputs, output) -> None:
        self.logits.append(output[0] if isinstance(output, tuple) else output)

    def pop(self) -> list[torch.Tensor]:
        logits, self.logits = self.logits, []
        return logits

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def token_mask(batch: dict[str, torch.Tensor], pad_id: int | None) -> torch.Tensor:
    """(B*T,) True on real tokens: scored ones and every non-padding token."""
    mask = batch["loss_mask"]
    if pad_id is not None:
        mask = mask | (batch["input_ids"] != pad_id)
    return mask.reshape(-1)


def token_domains(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B*T,) domain index of each token (its row's), -1 when the batch carries none."""
    b, t = batch["input_ids"].shape
    dom = batch.get("domain_ids")
    if dom is None:
        return torch.full((b * t,), -1, dtype=torch.long, device=batch["input_ids"].device)
    return dom[:, None].expand(b, t).reshape(-1)


class RouterObjective:
    """Callable ``(model_output, batch, step) -> (loss, metrics)``; see the module docstring.
    ``capture`` is the model's :class:`RouterLogits`."""

    def __init__(
        self,
        cfg,
        *,
        capture: RouterLogits,
        top_k: int,
        pad_id: int | None,
        domain_to_expert: dict[int, int] | None = None,
    ):
        self.cfg = cfg
        self.capture = capture
        self.top_k = top_k
        self.pad_id = pad_id
        self.domain_to_expert = domain_to_expert or {}

    def _expert_targets(self, domains: torch.Tensor) -> torch.Tensor:
        target = torch.full_like(domains, -1)
        for d, e in self.domain_to_expert.items():
            target[domains == d] = e
        return target

    def __call__(
        self, output, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        logits = self.capture.pop()
        mask = token_mask(batch, self.pad_id)
        lb = load_balancing_loss(logits, self.top_k, mask)
        z = router_z_loss(logits, mask)
        balance, sharp = beta_entropy_terms(logits, mask, self.top_k)
        loss = c.lb_weight * lb + c.z_weight * z + c.beta_entropy * balance + c.beta_sharpness * sharp
        metrics = {
            "router_lb": float(lb.detach()),
            "router_z": float(z.detach()),
            "router_balance": float(balance.detach()),
            "router_sharpness": float(sharp.detach()),
            "router_entropy": 1.0 - float(balance.detach()),
        }
        if c.domain_warmup_steps and step < c.domain_warmup_steps and self.domain_to_expert:
            dom_ce = router_domain_loss(logits, self._expert_targets(token_domains(batch)), mask)
            loss = loss + c.domain_weight * dom_ce
            metrics["router_domain_ce"] = float(dom_ce.detach())
        return loss, metrics


@torch.no_grad()
def routing_report(
    model,
    rows,
    *,
    layers: Sequence[int],
    num_experts: int,
    top_k: int,
    domains: Sequence[str],
    pad_id: int | None,
    max_rows: int = 64,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> RoutingStats:
    """Route ``rows`` (a :class:`~nexus.data.domains.DomainRows`, or image-text rows with domain
    ids) and accumulate :class:`RoutingStats`."""
    from nexus.trainer.teacher import base_model, model_inputs

    stats = RoutingStats(layers, num_experts, top_k, domains)
    was_training = model.training
    model.eval()
    capture = RouterLogits(model, layers)
    try:
        n = min(len(rows), max_rows)
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            batch = {k: v.to(device) for k, v in rows.batch(idx).items()}
            base_model(model)(**model_inputs(batch), use_cache=False)
            stats.update(capture.pop(), token_domains(batch), token_mask(batch, pad_id))
    finally:
        capture.remove()
        model.train(was_training)
    return stats


def routing_metrics(stats: RoutingStats) -> dict[str, Any]:
    """Scalars for the metrics log / TensorBoard: per-layer entropy and expert shares."""
    values: dict[str, Any] = {}
    for li, layer in enumerate(stats.layers):
        values[f"entropy/layer{layer}"] = float(stats.mean_distribution_entropy()[li])
        for e, share in enumerate(stats.expert_share()[li].tolist()):
            values[f"share/layer{layer}/expert{e}"] = share
    for d in stats.used_domains():
        for e, share in enumerate(stats.load()[d].tolist()):
            values[f"load/{stats.domains[d]}/expert{e}"] = share
    values["entropy/mean"] = float(stats.mean_distribution_entropy().mean()) if stats.layers else math.nan
    return values
