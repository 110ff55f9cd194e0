"""Router losses as pure functions of the router logits (see docs/router.md for the definitions).

Every function takes ``router_logits``: one ``(T, E)`` tensor per MoE layer (what transformers
returns with ``output_router_logits=True``: T = batch x sequence tokens, flattened) and an
optional ``token_mask`` ``(T,)`` (True on real tokens; padding is ignored). Layer values are
averaged, so a coefficient means the same thing whatever the depth.

Notation, per layer: ``p_t = softmax(z_t)`` the routing distribution of token t,
``p̄ = (1/T) Σ_t p_t`` the batch-mean distribution, ``f_e`` the fraction of the T·k top-k
slots given to expert e, ``H(q) = -Σ_e q_e log q_e``.

* :func:`load_balancing_loss` (Switch Transformer eq. 4, top-k form): ``E Σ_e f_e p̄_e``;
  1 at perfect balance, up to E when one expert takes everything.
* :func:`router_z_loss` (ST-MoE): ``mean_t (logsumexp_e z_t,e)^2``; keeps router logits small.
* :func:`beta_entropy_terms`: the guide's ``beta_entropy`` regularizer, in two parts:
  ``balance = 1 - H(f) / log E`` (0 when the batch's top-k slots are spread equally over the
  experts, 1 when one expert takes them all; gradient through ``p̄``, see the function) and ``sharpness = mean_t H(p_t) / log E`` (0 when each token picks one expert
  decisively). The loss is ``beta_entropy * balance + beta_sharpness * sharpness``: minimizing
  it *rewards* batch-level entropy (no collapse) while, optionally, asking each token to commit.
* :func:`router_domain_loss`: warm-up CE that routes tokens of domain d to expert d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_DOMAIN = -1


def _masked(logits: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """(T, E) float32 logits of the real tokens only."""
    logits = logits.float()
    if token_mask is None:
        return logits
    return logits[token_mask.reshape(-1).to(logits.device).bool()]


def _layers(router_logits) -> Sequence[torch.Tensor]:
    if isinstance(router_logits, torch.Tensor):
        return [router_logits]
    if not router_logits:
        raise ValueError("no router logits: the model has no MoE layers or output_router_logits was off")
    return router_logits


def load_balancing_loss(router_logits, top_k: int, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch load balancing ``E Σ_e f_e p̄_e``, averaged over layers.

    ``f_e`` (no gradient) counts top-k selections over T·k slots; ``p̄_e`` carries the gradient.
    Equals transformers' ``load_balancing_loss_func`` divided by ``top_k``.
    """
    total = 0.0
    layers = _layers(router_logits)
    for logits in layers:
        z = _masked(logits, token_mask)  # (T, E)
        probs = z.softmax(dim=-1)
        n_experts = probs.shape[-1]
        fraction = topk_load(probs, top_k)  # f_e, sums to 1
        total = total + n_experts * (fraction * probs.mean(dim=0)).sum()
    return total / len(layers)


def router_z_loss(router_logits, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE z-loss ``mean_t (logsumexp_e z_t,e)^2``, averaged over layers."""
    layers = _layers(router_logits)
    total = 0.0
    for logits in layers:
        z = _masked(logits, token_mask)
        total = total + torch.logsumexp(z, dim=-1).pow(2).mean()
    return total / len(layers)


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=dim)


def topk_load(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """(E,) share of the T·k top-k slots each expert gets (no gradient)."""
    chosen = probs.topk(top_k, dim=-1).indices
    counts = torch.zeros(probs.shape[-1], device=probs.device).scatter_add_(
        0, chosen.reshape(-1), torch.ones(chosen.numel(), device=probs.device)
    )
    return counts / max(chosen.numel(), 1)


def beta_entropy_terms(
    router_logits, token_mask: torch.Tensor | None = None, top_k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(balance, sharpness)`` averaged over layers, both in [0, 1] (see the module docstring).

    ``balance = 1 - H(f)/log E`` is the entropy of the *actual* top-k load ``f`` (what collapse
    is), not of the mean probabilities ``p̄``: ``p̄`` can be uniform while every token's top-1 is
    the same expert (all tokens undecided, e.g. ``p_t = (0.34, 0.33, 0.33)``), so an entropy
    bonus on ``p̄`` is satisfied by a collapsed router. ``f`` has no gradient, so the term is
    differentiated through ``p̄`` with ``f``'s entropy gradient (straight-through):
    ``d balance / d p̄_e = (log f_e + 1) / log E`` (``f_e`` floored at one slot), which lowers the
    probabilities of overloaded experts and raises those of idle ones.
    """
    layers = _layers(router_logits)
    balance, sharpness = 0.0, 0.0
    for logits in layers:
        probs = _masked(logits, token_mask).softmax(dim=-1)  # (T, E)
        log_e = math.log(probs.shape[-1])
        load = topk_load(probs, top_k)
        mean = probs.mean(dim=0)
        floor = 1.0 / max(probs.shape[0] * top_k, 1)
        surrogate = (torch.log(load.clamp_min(floor)) * (mean - mean.detach())).sum()
        balance = balance + 1.0 - entropy(load) / log_e + surrogate / log_e
        sharpness = sharpness + entropy(probs).mean() / log_e
    return balance / len(layers), sharpness / len(layers)


def beta_entropy_loss(
    router_logits,
    beta_entropy: float,
    beta_sharpness: float = 0.0,
    token_mask: torch.Tensor | None = None,
    top_k: int = 1,
) -> torch.Tensor:
    """``beta_entropy * (1 - H(f)/log E) + beta_sharpness * mean_t H(p_t)/log E``."""
    balance, sharpness = beta_entropy_terms(router_logits, token_mask, top_k)
    return beta_entropy * balance + beta_sharpness * sharpness


def router_domain_loss(router_logits, token_domains: torch.Tensor, token_mask: torch.Tensor | None = None):
    """Warm-up CE routing each token to the expert of its domain, averaged over layers.

    token_domains: (T,) expert index per token, ``-1`` for tokens without a domain (ignored).
    """
    layers = _layers(router_logits)
    target = token_domains.reshape(-1)
    if token_mask is not None:
        target = target.masked_fill(~token_mask.reshape(-1).to(target.device).bool(), IGNORE_DOMAIN)
    if not (target != IGNORE_DOMAIN).any():
        return layers[0].sum() * 0.0
    total = 0.0
    for logits in layers:
        total = total + F.cross_entropy(logits.float(), target.to(logits.device), ignore_index=IGNORE_DOMAIN)
    return total / len(layers)
