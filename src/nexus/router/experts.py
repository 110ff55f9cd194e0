"""Dense student -> standard transformers MoE model (Mixtral for Llama, Qwen2-MoE for Qwen2).

Two ways to make experts from a dense SwiGLU MLP ``down(act(gate(x)) * up(x))`` with ``I``
intermediate neurons:

* **split** (MoEfication / LLaMA-MoE): partition the ``I`` neurons into ``E`` groups of ``I/E``;
  expert ``e`` keeps the gate/up rows and down columns of its group. The dense MLP is exactly the
  sum of the experts. Both target classes renormalize the top-k routing weights to sum to 1, so
  each expert's down projection is scaled by ``E``: with all experts active and uniform routing
  (weights ``1/E``) the MoE layer equals the dense MLP. Groups come from :func:`even_partition`
  (baseline) or :func:`coactivation_partition` (balanced k-means of neurons by their
  co-activation on domain data). When ``I`` is not a multiple of ``E`` the last groups are padded
  with zero neurons, which output 0 and receive zero gradients, so they stay inert.
* **copy** (sparse upcycling): every expert is a full copy of the dense MLP. Because the routing
  weights sum to 1, the MoE layer equals the dense MLP for any routing until training moves the
  copies apart.

The output is a plain ``MixtralForCausalLM`` / ``Qwen2MoeForCausalLM`` (transformers 5.x stores
experts fused: ``experts.gate_up_proj`` ``(E, 2w, H)`` and ``experts.down_proj`` ``(E, H, w)``).
Every config field that changes the numerics (norm epsilon, rope parameters, head_dim, tying,
sliding window, attention biases) is carried over; a dense feature the target class cannot
express is refused rather than silently dropped.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nexus.errors import NexusError
from nexus.models import decoder_layers

log = logging.getLogger(__name__)

# dense model_type -> default MoE model_type
DEFAULT_MOE_ARCH = {"llama": "mixtral", "qwen2": "qwen2_moe"}
SUPPORTED_FAMILIES = tuple(DEFAULT_MOE_ARCH)
MOE_ARCHS = ("mixtral", "qwen2_moe")
_ALIGN = 8  # expert width multiple (16 bytes in bf16/fp16, 32 in fp32)


@dataclass(frozen=True)
class ExpertLayout:
    """How one dense model was turned into experts (recorded as ``config.nexus_moe``)."""

    mode: str  # "split" | "copy"
    num_experts: int
    top_k: int
    expert_layers: list[int]
    expert_names: list[str]
    partition: str  # "even" | "coactivation" | "copy"
    down_scale: float


# Why a family keeps its dense student in phase 4: no transformers MoE class computes what it does.
_NO_MOE_COUNTERPART = {
    "gemma3_text": "Gemma 3 keeps the dense student: no transformers MoE class has its sandwich norms "
    "(before and after attention and MLP), scaled embeddings and sliding/full attention layers, so "
    "no standard MoE could reproduce it exactly at initialization",
}


def dense_only_reason(model_type: str) -> str | None:
    """One line saying why a ``model_type`` student stays dense, or None when it gets experts."""
    if model_type in DEFAULT_MOE_ARCH:
        return None
    return _NO_MOE_COUNTERPART.get(model_type) or (
        f"a '{model_type}' student keeps the dense model: Nexus builds experts only where a standard "
        f"transformers MoE reproduces the dense family exactly ({', '.join(SUPPORTED_FAMILIES)}: Llama -> "
        "Mixtral, Qwen2 -> Qwen2-MoE)"
    )


def check_moe_request(model_type: str, num_experts: int, top_k: int, arch: str = "auto") -> str:
    """Validate family / E / k and return the target MoE model_type."""
    if model_type not in DEFAULT_MOE_ARCH:
        raise NexusError(
            f"cannot build experts from a '{model_type}' student: supported families are "
            f"{', '.join(SUPPORTED_FAMILIES)} (Llama -> Mixtral, Qwen2 -> Qwen2-MoE)"
        )
    if num_experts < 2:
        raise NexusError(f"expert count must be at least 2, got {num_experts}")
    if not 1 <= top_k <= num_experts:
        raise NexusError(f"top-k must be between 1 and the expert count ({num_experts}), got {top_k}")
    target = DEFAULT_MOE_ARCH[model_type] if arch == "auto" else arch
    if target not in MOE_ARCHS:
        raise NexusError(f"unknown MoE architecture '{arch}': choose auto, {', '.join(MOE_ARCHS)}")
    return target


# -- neuron partitions --------------------------------------------------------------------------


def even_partition(intermediate_size: int, num_experts: int) -> list[torch.Tensor]:
    """Contiguous groups ``[0, w), [w, 2w), ...`` (the last ones shorter when ``I % E != 0``)."""
    width = -(-intermediate_size // num_experts)
    return [torch.arange(e * width, min((e + 1) * width, intermediate_size)) for e in range(num_experts)]


def balanced_assign(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """Assign each row to a column, at most ``capacity`` rows per column, greedily by score.

    scores: (N, E), higher is better. Returns (N,) column indices. Needs ``N <= E * capacity``.
    """
    n, e = scores.shape
    if n > e * capacity:
        raise ValueError(f"{n} items do not fit in {e} groups of {capacity}")
    order = torch.argsort(scores.flatten(), descending=True)
    assign = torch.full((n,), -1, dtype=torch.long)
    fill = [0] * e
    remaining = n
    for flat in order.tolist():
        row, col = divmod(flat, e)
        if assign[row] >= 0 or fill[col] >= capacity:
            continue
        assign[row] = col
        fill[col] += 1
        remaining -= 1
        if remaining == 0:
            break
    return assign


def coactivation_partition(
    activations: torch.Tensor,
    num_experts: int,
    *,
    iterations: int = 20,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Balanced spherical k-means of neurons by co-activation.

    activations: (N_tokens, I) MLP intermediate activations ``act(gate(x)) * up(x)``. Each neuron
    is described by its activation magnitudes over the tokens (a column, L2-normalized); neurons
    that fire on the same tokens end up in the same expert. Groups have ``ceil(I/E)`` members at
    most. Returns ``E`` sorted index tensors.
    """
    features = activations.abs().float().t()  # (I, N)
    features = features - features.mean(dim=1, keepdim=True)
    features = nn.functional.normalize(features, dim=1)
    n_neurons = features.shape[0]
    capacity = -(-n_neurons // num_experts)
    gen = torch.Generator().manual_seed(seed)
    centroids = features[torch.randperm(n_neurons, generator=gen)[:num_experts]].clone()  # (E, N)
    assign = torch.zeros(n_neurons, dtype=torch.long)
    for _ in range(iterations):
        new_assign = balanced_assign(features @ centroids.t(), capacity)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        for e in range(num_experts):
            members = features[assign == e]
            if len(members):
                centroids[e] = nn.functional.normalize(members.mean(dim=0), dim=0)
    return [torch.nonzero(assign == e).flatten() for e in range(num_experts)]


def align_groups_to_domains(
    groups: list[torch.Tensor], activations: torch.Tensor, token_domains: torch.Tensor, num_domains: int
) -> list[torch.Tensor]:
    """Reorder ``groups`` so group ``i`` is the one most used by domain ``i`` (Hungarian matching).

    activations: (N, I); token_domains: (N,) domain index per token. Only reorders when there are
    at least as many groups as domains; the extra groups keep their order after the matched ones.
    """
    from scipy.optimize import linear_sum_assignment

    magnitude = activations.abs().float()
    usage = torch.zeros(len(groups), num_domains)
    for d in range(num_domains):
        rows = magnitude[token_domains == d]
        if len(rows) == 0:
            continue
        per_neuron = rows.mean(dim=0) / magnitude.mean(dim=0).clamp_min(1e-12)  # relative use by d
        for g, idx in enumerate(groups):
            usage[g, d] = per_neuron[idx].mean()
    if len(groups) < num_domains:
        return groups
    group_idx, domain_idx = linear_sum_assignment(-usage.numpy())
    matched = {int(d): int(g) for g, d in zip(group_idx, domain_idx, strict=True)}
    order = [matched[d] for d in range(num_domains)]
    order += [g for g in range(len(groups)) if g not in order]
    return [groups[g] for g in order]


@torch.no_grad()
def collect_mlp_activations(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    layers: Sequence[int],
    *,
    max_tokens: int = 4096,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """MLP inputs and intermediate activations (input of ``down_proj``) of the given dense layers.

    Each batch holds the model's inputs (``input_ids`` (B, T), ``position_ids`` (B, T), and for a
    vision-language model ``attention_mask`` and ``pixel_values``), ``token_mask`` (B, T) bool
    (the tokens to keep) and optionally ``domain_ids`` (B,) (-1 = unknown). Returns
    ``({layer: (N, H)}, {layer: (N, I)}, token_domains (N,))`` over at most ``max_tokens`` tokens.
    """
    from nexus.trainer.teacher import model_inputs

    blocks = decoder_layers(model)
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    acts: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    keep: list[torch.Tensor] = []
    handles = []
    for i in layers:

        def mlp_hook(module, args, i=i):
            inputs[i].append(args[0][keep[0]].float().cpu())

        def down_hook(module, args, i=i):
            acts[i].append(args[0][keep[0]].float().cpu())

        handles.append(blocks[i].mlp.register_forward_pre_hook(mlp_hook))
        handles.append(blocks[i].mlp.down_proj.register_forward_pre_hook(down_hook))
    domains: list[torch.Tensor] = []
    total = 0
    try:
        for batch in batches:
            mask = batch["token_mask"].bool()
            keep[:] = [mask]
            model(**model_inputs(batch), use_cache=False)
            dom = batch.get("domain_ids")
            dom = torch.full((mask.shape[0],), -1) if dom is None else dom.cpu()
            domains.append(dom[:, None].expand(mask.shape)[mask.cpu()])
            total += int(mask.sum())
            if total >= max_tokens:
                break
    finally:
        for h in handles:
            h.remove()
    if not total:
        raise NexusError("no calibration tokens: the data gave no rows to group neurons on")
    x = {i: torch.cat(v)[:max_tokens] for i, v in inputs.items()}
    h = {i: torch.cat(v)[:max_tokens] for i, v in acts.items()}
    return x, h, torch.cat(domains)[:max_tokens]


def expert_output_norms(
    mlp: nn.Module, activations: torch.Tensor, groups: list[torch.Tensor]
) -> torch.Tensor:
    """(N, E) norm of each neuron group's contribution ``down[:, g] @ h[:, g]`` per token."""
    down = mlp.down_proj.weight.float().cpu()  # (H, I)
    return torch.stack([(activations[:, g] @ down[:, g].t()).norm(dim=-1) for g in groups], dim=1)


# -- config + weights ---------------------------------------------------------------------------


def _common_config(dense_cfg) -> dict:
    names = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "initializer_range",
        "rms_norm_eps",
        "tie_word_embeddings",
        "attention_dropout",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    out = {n: getattr(dense_cfg, n) for n in names if hasattr(dense_cfg, n)}
    out["rope_parameters"] = copy.deepcopy(dense_cfg.rope_parameters)
    return out


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def build_moe_config(
    dense_cfg, target: str, *, num_experts: int, top_k: int, expert_width: int, expert_layers
):
    """The MoE config carrying every numerics-affecting field of ``dense_cfg``."""
    from transformers import MixtralConfig, Qwen2MoeConfig

    common = _common_config(dense_cfg)
    n_layers = dense_cfg.num_hidden_layers
    if getattr(dense_cfg, "mlp_bias", False):
        raise NexusError(
            "cannot build experts: the student's MLP has biases (mlp_bias), which MoE experts lack"
        )
    attention_bias = bool(getattr(dense_cfg, "attention_bias", dense_cfg.model_type == "qwen2"))
    if target == "mixtral":
        if attention_bias:
            raise NexusError(
                "Mixtral has no attention biases; use moe_architecture=qwen2_moe for this student"
            )
        if sorted(expert_layers) != list(range(n_layers)):
            raise NexusError(
                "Mixtral puts experts in every layer; to give experts to some layers only, "
                "use moe_architecture=qwen2_moe (its mlp_only_layers keeps the others dense)"
            )
        sliding = (
            getattr(dense_cfg, "sliding_window", None)
            if getattr(dense_cfg, "use_sliding_window", True)
            else None
        )
        return MixtralConfig(
            **common,
            head_dim=_head_dim(dense_cfg),
            intermediate_size=expert_width,
            sliding_window=sliding,
            num_local_experts=num_experts,
            num_experts_per_tok=top_k,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
    if _head_dim(dense_cfg) != dense_cfg.hidden_size // dense_cfg.num_attention_heads:
        raise NexusError(
            "Qwen2-MoE derives head_dim from hidden_size / heads; this student uses another head_dim"
        )
    extra = {}
    if dense_cfg.model_type == "qwen2":
        extra = {
            "use_sliding_window": dense_cfg.use_sliding_window,
            "sliding_window": dense_cfg.sliding_window,
            "max_window_layers": dense_cfg.max_window_layers,
            "layer_types": list(dense_cfg.layer_types) if dense_cfg.layer_types else None,
        }
    else:
        extra = {"use_sliding_window": False}
    return Qwen2MoeConfig(
        **common,
        **extra,
        intermediate_size=dense_cfg.intermediate_size,  # for the layers that stay dense
        moe_intermediate_size=expert_width,
        shared_expert_intermediate_size=0,  # no shared expert: the routed experts hold the whole MLP
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,  # same routing-weight semantics as Mixtral
        qkv_bias=attention_bias,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i in range(n_layers) if i not in set(expert_layers)],
        output_router_logits=False,
    )


def _expert_weights(mlp: nn.Module, groups: list[torch.Tensor], width: int, scale: float):
    """Fused expert tensors from a dense MLP: gate_up (E, 2w, H) and down (E, H, w), zero-padded."""
    gate, up, down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight  # (I,H) (I,H) (H,I)
    hidden = gate.shape[1]
    e = len(groups)
    gate_up = gate.new_zeros(e, 2 * width, hidden)
    down_e = down.new_zeros(e, hidden, width)
    for k, idx in enumerate(groups):
        n = len(idx)
        gate_up[k, :n] = gate[idx]
        gate_up[k, width : width + n] = up[idx]
        down_e[k, :, :n] = down[:, idx] * scale
    return gate_up, down_e


@torch.no_grad()
def dense_to_moe(
    dense: nn.Module,
    *,
    num_experts: int = 3,
    top_k: int = 1,
    mode: str = "split",
    expert_layers: Sequence[int] | None = None,
    groups: dict[int, list[torch.Tensor]] | None = None,
    router_weights: dict[int, torch.Tensor] | None = None,
    router_init_std: float | None = None,
    architecture: str = "auto",
    expert_names: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Build the MoE model from ``dense`` (left untouched): a ``MixtralForCausalLM`` /
    ``Qwen2MoeForCausalLM`` from a text model; from a vision-language model (e.g. a
    ``LlavaForConditionalGeneration``) the same class with a MoE language tower (its
    ``text_config`` a ``MixtralConfig`` / ``Qwen2MoeConfig``), vision tower and projector copied.

    groups: per expert layer, ``E`` neuron index tensors (split mode; default: even split).
    router_weights: per expert layer an ``(E, H)`` router matrix; otherwise routers are drawn
    from N(0, router_init_std) (``0`` gives exactly uniform routing; default: the config's
    ``initializer_range``).
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    dense_cfg = dense.config.get_text_config()
    composite = dense_cfg is not dense.config  # a vision-language model: experts in its language tower
    blocks = decoder_layers(dense)
    stack = next(name for name, m in dense.named_modules() if m is blocks)  # model[.language_model].layers
    target = check_moe_request(dense_cfg.model_type, num_experts, top_k, architecture)
    n_layers = dense_cfg.num_hidden_layers
    layers = sorted(range(n_layers) if expert_layers is None else set(expert_layers))
    if not layers or any(not 0 <= i < n_layers for i in layers):
        raise NexusError(
            f"expert layers must be indices in 0..{n_layers - 1}, got {list(expert_layers or [])}"
        )
    if mode not in ("split", "copy"):
        raise NexusError(f"expert mode must be 'split' or 'copy', not {mode!r}")
    inter = dense_cfg.intermediate_size
    width = expert_width(inter, num_experts) if mode == "split" else inter
    scale = float(num_experts) if mode == "split" else 1.0
    if mode == "split" and width * num_experts != inter:
        log.info("splitting %d neurons into %d experts of width %d (zero-padded)", inter, num_experts, width)

    text_cfg = build_moe_config(
        dense_cfg, target, num_experts=num_experts, top_k=top_k, expert_width=width, expert_layers=layers
    )
    cfg = copy.deepcopy(dense.config) if composite else text_cfg
    if composite:
        cfg.text_config = text_cfg  # e.g. a LlavaConfig whose text_config is a MixtralConfig
    names = list(expert_names or [f"expert{i}" for i in range(num_experts)])
    if len(names) != num_experts:
        raise NexusError(f"{len(names)} expert names given for {num_experts} experts")
    partition = "copy" if mode == "copy" else ("coactivation" if groups else "even")
    cfg.nexus_moe = {
        "mode": mode,
        "num_experts": num_experts,
        "top_k": top_k,
        "expert_layers": layers,
        "expert_names": names,
        "partition": partition,
        "down_scale": scale,
        "source_model_type": dense_cfg.model_type,
    }
    if getattr(dense.config, "nexus_student", None):
        cfg.nexus_student = copy.deepcopy(dense.config.nexus_student)

    dtype = next(dense.parameters()).dtype
    moe = (AutoModelForImageTextToText if composite else AutoModelForCausalLM).from_config(cfg, dtype=dtype)
    state = {k: v for k, v in dense.state_dict().items() if not (k.startswith(stack) and ".mlp." in k)}
    std = dense_cfg.initializer_range if router_init_std is None else router_init_std
    gen = torch.Generator().manual_seed(seed)
    moe_blocks = decoder_layers(moe)
    for i in range(n_layers):
        prefix = f"{stack}.{i}.mlp."
        src = blocks[i].mlp
        if i not in layers:
            for name in ("gate_proj", "up_proj", "down_proj"):
                state[f"{prefix}{name}.weight"] = getattr(src, name).weight
            continue
        if mode == "copy":
            layer_groups = [torch.arange(inter)] * num_experts
        else:
            layer_groups = (groups or {}).get(i) or even_partition(inter, num_experts)
            _check_groups(layer_groups, inter, num_experts, i)
        gate_up, down = _expert_weights(src, layer_groups, width, scale)
        state[prefix + "experts.gate_up_proj"] = gate_up
        state[prefix + "experts.down_proj"] = down
        if router_weights and i in router_weights:
            router = router_weights[i].to(dtype)
        else:
            router = torch.randn(num_experts, dense_cfg.hidden_size, generator=gen) * std
        state[prefix + "gate.weight"] = router.to(dtype)
        if target == "qwen2_moe":
            block = moe_blocks[i].mlp
            for key, tensor in block.state_dict().items():
                if key.startswith("shared_expert"):
                    state[prefix + key] = torch.zeros_like(tensor)
    missing, unexpected = moe.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise NexusError(
            f"MoE conversion left weights unset: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    moe.tie_weights()
    moe.generation_config = copy.deepcopy(dense.generation_config)
    moe.eval()
    return moe


def expert_width(intermediate_size: int, num_experts: int) -> int:
    """Split-expert width: ``ceil(I/E)`` rounded up to a multiple of 8.

    The torch CPU grouped-GEMM kernel that transformers uses for fused experts needs 16-byte
    aligned rows; the padding neurons are zero, so they change nothing.
    """
    width = -(-intermediate_size // num_experts)
    return -(-width // _ALIGN) * _ALIGN


def _check_groups(groups: list[torch.Tensor], inter: int, num_experts: int, layer: int) -> None:
    if len(groups) != num_experts:
        raise NexusError(f"layer {layer}: {len(groups)} neuron groups for {num_experts} experts")
    flat = torch.cat([g.flatten() for g in groups])
    if flat.numel() != inter or not torch.equal(flat.sort().values, torch.arange(inter)):
        raise NexusError(f"layer {layer}: neuron groups must partition the {inter} MLP neurons exactly")
    width = -(-inter // num_experts)
    if max(len(g) for g in groups) > width:
        raise NexusError(f"layer {layer}: a neuron group exceeds the expert width {width}")


@torch.no_grad()
def fit_router(inputs: torch.Tensor, expert_scores: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Least-squares router: ``W`` (E, H) with ``inputs @ W.T ~ standardized expert_scores``.

    inputs: (N, H) MLP inputs; expert_scores: (N, E), e.g. the norm of each expert's output.
    Scores are standardized per token so the router learns which expert matters most *for this
    token*, not which one is loud overall (the MoEfication router idea, closed form).
    """
    x = inputs.float()
    y = expert_scores.float()
    y = (y - y.mean(dim=1, keepdim=True)) / y.std(dim=1, keepdim=True).clamp_min(1e-6)
    gram = x.t() @ x + ridge * x.shape[0] * torch.eye(x.shape[1])
    return torch.linalg.solve(gram, x.t() @ y).t()


def moe_layout(model: nn.Module) -> ExpertLayout | None:
    """The :class:`ExpertLayout` recorded in a converted model's config (None for dense models)."""
    info = getattr(model.config, "nexus_moe", None)
    if not info:
        return None
    return ExpertLayout(
        mode=info["mode"],
        num_experts=info["num_experts"],
        top_k=info["top_k"],
        expert_layers=list(info["expert_layers"]),
        expert_names=list(info["expert_names"]),
        partition=info["partition"],
        down_scale=float(info["down_scale"]),
    )
