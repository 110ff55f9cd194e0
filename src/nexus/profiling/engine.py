"""Running a model with one decoder layer perturbed, fast.

A perturbation of layer ``i`` cannot change what layers ``0..i-1`` compute, so the profiler
runs the unperturbed model once per batch (:meth:`LayerRunner.clean_pass`), keeps every
layer's input hidden state and call arguments (attention mask, rotary position embeddings,
position ids: exactly what the model's own forward passed, so Llama, Qwen2 and Mistral, with
their per-layer sliding-window masks, all work), and for each perturbation runs only layers
``i..L-1`` from the cached input (:meth:`LayerRunner.run_from`). Removal of layer ``i`` starts
directly at layer ``i + 1`` from the cached input of layer ``i``. On average that is half the
layer work of naive full re-runs, and the LM head is applied only to the scored positions.

:func:`naive_sequence_logprobs` is the reference: the whole model re-run with the perturbation
installed as hooks, scored from its full logits. Tests check that both agree.

Perturbations (``kind``):

* ``removal``: the block is the identity (output = input);
* ``noise``: Gaussian noise added to the block's output, per token scaled to the RMS of that
  token's output times ``noise_scale``;
* ``attention`` / ``mlp``: the attention (resp. MLP) sub-block's contribution to the residual
  stream is zeroed, the rest of the block runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nexus.errors import NexusError
from nexus.models import decoder_layers, decoder_stack

PERTURBATIONS = ("removal", "noise", "attention", "mlp")


@dataclass
class Batch:
    """Right-padded probe sequences.

    input_ids, attention_mask, score_mask: (B, T); ``score_mask[b, t]`` marks token ``t`` as
    scored (predicted from position ``t - 1``). ``index``: (B,) positions in the probe set's
    ``sequences`` list. ``extra``: further model inputs (a vision-language probe's
    ``pixel_values``, its rows' images concatenated in row order, and what goes with them).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor
    index: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def make_batches(sequences: Sequence, *, batch_tokens: int, pad_id: int, device: torch.device) -> list[Batch]:
    """Group sequences of similar length (sorted) into batches of at most ``batch_tokens`` padded
    tokens each (a single longer sequence gets a batch of its own)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    groups: list[list[int]] = []
    for i in order:
        length = len(sequences[i].input_ids)
        if groups and (len(groups[-1]) + 1) * length <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    batches = []
    for group in groups:
        width = max(len(sequences[i].input_ids) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(group), width), dtype=torch.long)
        score = torch.zeros((len(group), width), dtype=torch.bool)
        for row, i in enumerate(group):
            seq = sequences[i]
            n = len(seq.input_ids)
            ids[row, :n] = torch.tensor(seq.input_ids)
            attn[row, :n] = 1
            score[row, :n] = torch.tensor(seq.score_mask)
        inputs = [getattr(sequences[i], "inputs", None) or {} for i in group]
        extra = {}
        if any(inputs):
            from nexus.multimodal.rows import collate_inputs  # per-token inputs padded to width

            lengths = [len(sequences[i].input_ids) for i in group]
            extra = {k: v.to(device) for k, v in collate_inputs(inputs, lengths, width).items()}
        batches.append(Batch(ids.to(device), attn.to(device), score.to(device), torch.tensor(group), extra))
    return batches


# -- perturbations as hooks -----------------------------------------------------------------------


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _layer_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def add_noise(hidden: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``hidden + scale * rms(hidden) * N(0, 1)``, the RMS taken per token over the hidden size.

    hidden: (B, T, H). The noise is drawn in float32 on the CPU from ``generator`` (reproducible
    across devices and paths), then cast to ``hidden``'s dtype and device.
    """
    noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32)
    rms = hidden.float().pow(2).mean(-1, keepdim=True).sqrt().cpu()
    return hidden + (scale * rms * noise).to(hidden.dtype).to(hidden.device)


@dataclass
class Perturbation:
    """What to do to one layer. ``seed`` makes the noise reproducible; :func:`perturbed` re-seeds
    it for each call with ``seed + batch_seed``, so the fast and naive paths draw the same noise."""

    kind: str = "removal"
    noise_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, not {self.kind!r}")
        if self.noise_scale < 0:
            raise ValueError("noise_scale must be >= 0")


@contextlib.contextmanager
def perturbed(
    layers: nn.ModuleList, index: int, perturbation: Perturbation, batch_seed: int = 0
) -> Iterator[None]:
    """Install ``perturbation`` on ``layers[index]`` for the duration of the block."""
    layer = layers[index]
    kind = perturbation.kind
    if kind == "removal":

        def hook(module, args, kwargs, output):
            return _replace_first(output, _layer_input(args, kwargs))

        handle = layer.register_forward_hook(hook, with_kwargs=True)
    elif kind == "noise":
        generator = torch.Generator().manual_seed(perturbation.seed + batch_seed)

        def hook(module, args, kwargs, output):
            return _replace_first(output, add_noise(_first(output), perturbation.noise_scale, generator))

        handle = layer.register_forward_hook(hook, with_kwargs=True)
    else:
        name = "self_attn" if kind == "attention" else "mlp"
        sub = getattr(layer, name, None)
        if not isinstance(sub, nn.Module):
            raise NexusError(
                f"{type(layer).__name__} has no '{name}' sub-block: cannot apply '{kind}' removal"
            )

        def hook(module, args, output):
            return _replace_first(output, torch.zeros_like(_first(output)))

        handle = sub.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- the fast path --------------------------------------------------------------------------------


@dataclass
class CleanPass:
    """What the unperturbed run of one batch left behind.

    inputs: L + 1 tensors (B, T, H): the input of each layer, then the last layer's output.
    layer_kwargs: the keyword arguments each layer was called with (masks, rotary embeddings).
    """

    inputs: list[torch.Tensor]
    layer_kwargs: list[dict]


class LayerRunner:
    """Runs a causal LM's decoder stack layer by layer (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.base = getattr(model, model.base_model_prefix)
        # a vision-language model's final norm is its language tower's
        self.norm = getattr(decoder_stack(model), "norm", None)
        self.head = model.get_output_embeddings()
        if self.norm is None or self.head is None:
            raise NexusError(
                f"unsupported architecture {type(model).__name__}: no final norm or LM head found"
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @torch.inference_mode()
    def clean_pass(self, batch: Batch) -> CleanPass:
        inputs: list[torch.Tensor | None] = [None] * (self.num_layers + 1)
        kwargs_seen: list[dict | None] = [None] * self.num_layers
        handles = []
        for i, layer in enumerate(self.layers):

            def pre(module, args, kwargs, i=i):
                inputs[i] = _layer_input(args, kwargs)
                kwargs_seen[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

        def post(module, args, output):
            inputs[-1] = _first(output)

        handles.append(self.layers[-1].register_forward_hook(post))
        try:
            self.base(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **batch.extra
            )
        finally:
            for handle in handles:
                handle.remove()
        return CleanPass(inputs, kwargs_seen)

    @torch.inference_mode()
    def run_from(
        self, clean: CleanPass, index: int, perturbation: Perturbation, batch_seed: int = 0
    ) -> torch.Tensor:
        """The last layer's output (B, T, H) with layer ``index`` perturbed, from the cached inputs."""
        if perturbation.kind == "removal":
            hidden = clean.inputs[index]
            start = index + 1
        else:
            hidden = clean.inputs[index]
            start = index
        for j in range(start, self.num_layers):
            ctx = (
                perturbed(self.layers, j, perturbation, batch_seed)
                if j == index
                else contextlib.nullcontext()
            )
            with ctx:
                hidden = _first(self.layers[j](hidden, **clean.layer_kwargs[j]))
        return hidden

    @torch.inference_mode()
    def sequence_logprobs(
        self, hidden: torch.Tensor, batch: Batch, chunk: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of the scored tokens and their count, per sequence.

        hidden: (B, T, H) last-layer output (before the final norm). Returns two (B,) tensors
        (float32 sums, int64 counts). The LM head runs only on positions that predict a scored
        token, ``chunk`` rows at a time, so (B, T, V) logits are never materialized.
        """
        targets_mask = batch.score_mask[:, 1:]  # (B, T-1)
        rows = torch.nonzero(targets_mask, as_tuple=True)
        states = hidden[:, :-1][rows]  # (N, H)
        targets = batch.input_ids[:, 1:][rows]  # (N,)
        token_logprobs = torch.empty(states.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, states.shape[0], chunk):
            logits = self.head(self.norm(states[start : start + chunk])).float()
            token_logprobs[start : start + chunk] = logits.log_softmax(-1).gather(
                -1, targets[start : start + chunk, None]
            )[:, 0]
        sums = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, rows[0], token_logprobs)
        return sums, targets_mask.sum(1)


def block_influence(
    inputs: torch.Tensor, outputs: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[float, int]:
    """ShortGPT's Block Influence summed over real tokens: sum of ``1 - cos(input, output)``.

    inputs, outputs: (B, T, H); attention_mask: (B, T). Returns (sum, token count) so batches
    can be pooled; the layer's BI is sum / count.
    """
    cos = torch.nn.functional.cosine_similarity(inputs.float(), outputs.float(), dim=-1)  # (B, T)
    keep = attention_mask.bool()
    return float((1 - cos)[keep].sum()), int(keep.sum())


# -- the reference --------------------------------------------------------------------------------


@torch.inference_mode()
def naive_sequence_logprobs(
    model: nn.Module,
    batch: Batch,
    index: int | None = None,
    perturbation: Perturbation | None = None,
    batch_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scoring: a full forward (perturbation installed on layer ``index``, if given),
    log-softmax of the full (B, T, V) logits, summed over the scored tokens. Returns (B,) sums
    and counts like :meth:`LayerRunner.sequence_logprobs`."""
    layers = decoder_layers(model)
    ctx = (
        perturbed(layers, index, perturbation, batch_seed) if index is not None else contextlib.nullcontext()
    )
    with ctx:
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **batch.extra
        ).logits
    logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.score_mask[:, 1:]
    return (logprobs * mask).sum(1), mask.sum(1)
