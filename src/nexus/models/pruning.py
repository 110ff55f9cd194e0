"""Students by depth pruning: keep a subset of a teacher's decoder layers, in order.

The student is the teacher's own class with ``num_hidden_layers`` (and per-layer config lists)
cut down, so it saves with ``save_pretrained`` and reloads with plain ``transformers``. The
keep-list and the teacher it came from are recorded in ``config.nexus_student`` (kept in
``config.json``) and in the ``nexus_student.json`` sidecar written by :func:`save_student`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from nexus.errors import NexusError

SIDECAR = "nexus_student.json"
# Config fields holding one entry per layer; they must be cut like the layers themselves.
_PER_LAYER_FIELDS = ("layer_types", "sliding_window_pattern_list", "no_rope_layers")


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module holding the decoder blocks and the final norm: ``model.model`` for
    Llama/Qwen2/Mistral/...; for a vision-language model its language tower, wherever the family
    keeps it (``model.model.language_model`` for LLaVA, Qwen2-VL and Gemma 3,
    ``model.model.text_model`` for Idefics3: transformers' own ``get_decoder()``)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if isinstance(getattr(base, "layers", None), nn.ModuleList):
        return base
    get_decoder = getattr(base, "get_decoder", None)
    tower = get_decoder() if callable(get_decoder) else None
    if tower is None or not isinstance(getattr(tower, "layers", None), nn.ModuleList):
        raise NexusError(
            f"unsupported architecture {type(model).__name__}: no decoder layer stack at "
            "model.layers (supported: Llama, Qwen2, Mistral and other decoder-only families)"
        )
    return tower


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks (``model.model.layers`` for Llama/Qwen2/Mistral/...;
    the language tower's for a vision-language model, see :func:`decoder_stack`)."""
    return decoder_stack(model).layers


def validate_keep_layers(keep_layers: Sequence[int], num_layers: int) -> list[int]:
    keep = list(keep_layers)
    if not keep:
        raise NexusError("keep-list is empty: a student needs at least one layer")
    for layer in keep:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise NexusError(f"keep-list entries must be layer indices, got {layer!r}")
        if not 0 <= layer < num_layers:
            raise NexusError(
                f"keep-list layer {layer} is out of range: the teacher has layers 0..{num_layers - 1}"
            )
    duplicates = sorted({x for x in keep if keep.count(x) > 1})
    if duplicates:
        raise NexusError(f"keep-list has duplicate layers: {duplicates}")
    if keep != sorted(keep):
        raise NexusError(f"keep-list must be in increasing order (layers are copied in order): {keep}")
    return keep


def build_student(
    teacher: nn.Module, keep_layers: Sequence[int], *, teacher_name: str | None = None
) -> nn.Module:
    """Return a new model of the teacher's class holding copies of ``keep_layers``, in order.

    Embeddings, final norm and LM head are copied too; the teacher is left untouched (the
    student owns its tensors).
    """
    teacher_layers = decoder_layers(teacher)
    n_teacher = len(teacher_layers)
    keep = validate_keep_layers(keep_layers, n_teacher)

    config = copy.deepcopy(teacher.config)
    # A vision-language model's layer count is its language tower's (text_config); its own for an LM.
    text_config = config.get_text_config()
    text_config.num_hidden_layers = len(keep)
    for name in _PER_LAYER_FIELDS:
        values = getattr(text_config, name, None)
        if isinstance(values, list | tuple) and len(values) == n_teacher:
            setattr(text_config, name, [values[i] for i in keep])
    if isinstance(getattr(text_config, "max_window_layers", None), int):  # Qwen2: SWA from this layer on
        text_config.max_window_layers = sum(1 for i in keep if i < text_config.max_window_layers)
    config.nexus_student = {
        "teacher": teacher_name or getattr(teacher.config, "_name_or_path", None) or "unknown",
        "teacher_num_layers": n_teacher,
        "keep_layers": keep,
    }

    new_index = {old: new for new, old in enumerate(keep)}
    prefix = next(name for name, module in teacher.named_modules() if module is teacher_layers) + "."

    def rename(key: str) -> str | None:
        if not key.startswith(prefix):
            return key
        index, rest = key[len(prefix) :].split(".", 1)
        return f"{prefix}{new_index[int(index)]}.{rest}" if int(index) in new_index else None

    state = {}
    for key, tensor in teacher.state_dict().items():
        new_key = rename(key)
        if new_key is not None:
            state[new_key] = tensor.detach().clone()

    dtype = next(teacher.parameters()).dtype
    with torch.device("meta"):
        student = type(teacher)(config)
    student.load_state_dict(state, strict=False, assign=True)
    # Non-persistent buffers (rotary inv_freq, ...) are not in the state dict: copy them over.
    for key, buffer in teacher.named_buffers():
        new_key = rename(key)
        if new_key is None:
            continue
        module_name, _, buffer_name = new_key.rpartition(".")
        module = student.get_submodule(module_name)
        module.register_buffer(
            buffer_name, buffer.detach().clone(), persistent=buffer_name in module.state_dict()
        )
    student.tie_weights()
    missing = [n for n, p in student.named_parameters() if p.is_meta]
    if missing:
        raise NexusError(f"cannot build a student of {type(teacher).__name__}: {missing[0]} was not copied")
    student.to(dtype)
    for index, layer in enumerate(decoder_layers(student)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    student.generation_config = copy.deepcopy(teacher.generation_config)
    student.eval()
    return student


def save_student(student: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """``save_pretrained`` (safetensors) plus the ``nexus_student.json`` sidecar."""
    out = Path(out_dir)
    student.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    record = getattr(student.config, "nexus_student", None)
    if record:
        (out / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
    return out
