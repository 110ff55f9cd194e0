"""A CPU-friendly experts implementation for the routed (Mixtral / Qwen2-MoE) students.

transformers 5 stores a layer's experts fused (``gate_up_proj`` ``(E, 2w, H)``, ``down_proj``
``(E, H, w)``) and picks how to run them through ``config._experts_implementation``. Its default,
``grouped_mm``, sorts the tokens by expert, builds offsets with ``histc``/``cumsum``, multiplies
with ``grouped_mm`` over *every* expert's weight view and un-permutes the result: about twenty
small ops per layer whatever the token count. ``eager`` one-hot encodes the routing and loops in
Python; ``batched_mm`` gathers a full copy of the chosen expert's weights per token. At batch 1
decoding (one token per step, top-1 routing: the chat case) that bookkeeping, not the
matrix-vector products, is what the routed student pays over the dense one.

:func:`sorted_loop_experts_forward` (registered as ``"nexus_sorted"``) does the least work that
gives the same result: one token and top-1 is two ``linear`` calls on the chosen expert's weights;
more tokens are sorted once and each expert that received tokens runs one ``linear`` pair on its
contiguous slice. It is pure torch (autograd works) and hands CUDA tensors and layouts it does not
cover (biases, transposed or non-gated experts, expert parallelism) back to ``grouped_mm``.

The choice is a runtime attribute that ``save_pretrained`` never writes (transformers drops
``_experts_implementation`` from ``config.json``), so a release still loads with plain
transformers, which then runs its own default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

IMPLEMENTATION = "nexus_sorted"


def sorted_loop_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Experts forward: ``hidden_states`` ``(T, H)``, routing ``(T, k)`` -> ``(T, H)``."""
    from transformers.integrations.moe import grouped_mm_experts_forward

    if (
        hidden_states.device.type != "cpu"
        or not self.has_gate
        or self.has_bias
        or self.is_transposed
        or self.has_post_expert_norm
        or self._is_expert_parallel
    ):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    num_tokens, top_k = top_k_index.shape
    dtype = hidden_states.dtype
    if num_tokens * top_k == 1:  # batch-1 decoding with top-1 routing
        expert = int(top_k_index)
        out = F.linear(
            self._apply_gate(F.linear(hidden_states, self.gate_up_proj[expert])), self.down_proj[expert]
        )
        return (out * top_k_weights.reshape(1, 1).to(out.dtype)).to(dtype)
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=self.num_experts).tolist()
    tokens = order // top_k
    chosen = hidden_states[tokens]
    pieces = []
    start = 0
    for expert, count in enumerate(counts[: self.num_experts]):  # ids >= E (none here) are skipped
        if count:
            part = chosen[start : start + count]
            gated = self._apply_gate(F.linear(part, self.gate_up_proj[expert]))
            pieces.append(F.linear(gated, self.down_proj[expert]))
            start += count
    out = torch.cat(pieces) * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(dtype)
    return torch.zeros_like(hidden_states).index_add_(0, tokens[:start], out.to(dtype))


def register() -> None:
    """Make ``experts_implementation="nexus_sorted"`` known to transformers (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, sorted_loop_experts_forward)


def use_fast_experts(model) -> bool:
    """Switch ``model``'s MoE layers to :func:`sorted_loop_experts_forward`; False (model
    untouched) when it has no experts that transformers lets us re-implement."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_experts_implementation", None) is None:
        return False
    can_set = getattr(model, "_can_set_experts_implementation", None)
    if can_set is None or not can_set():
        return False
    register()
    model.set_experts_implementation(IMPLEMENTATION)
    return True
