"""Hugging Face / Nexus release directories -> one GGUF file for llama.cpp and Ollama.

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` for the two dense families Nexus
students come from:

* ``llama`` -- q/k projection rows permuted into llama.cpp's rotary order (transformers'
  GGUF loader undoes it), ``rope.dimension_count`` = head dim, no biases;
* ``qwen2`` -- no permutation, q/k/v biases kept.

Matrices (2-D weights) take the requested type; norms and biases stay F32, as llama.cpp does.
A Q8_0 matrix whose rows are not a multiple of 32 falls back to F16. The tokenizer goes in as
llama.cpp's ``gpt2`` byte-level BPE (tokens, types, merges), with the special token ids,
``add_bos_token`` as the Hugging Face tokenizer does it, and ``tokenizer.chat_template``.
``tokenizer.ggml.pre`` is read off the tokenizer's pre-tokenizer, so llama.cpp splits text the
way the release's own tokenizer does. Anything outside that (MoE, other architectures, rope
scaling, sliding windows, SentencePiece vocabularies) is refused with one line, before any
weight is read: a file that loads but computes something else is worse than no file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.errors import NexusError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
SUPPORTED_ARCHS = ("llama", "qwen2")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
_Q8_BLOCK = 32

# Pre-tokenizer regexes as the Hugging Face tokenizer.json files of those families spell them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_gguf` wrote."""

    path: Path
    type: str
    architecture: str
    tensors: int
    bytes: int
    tensor_types: dict[str, int]  # GGML type name -> number of tensors stored in it


def _file_type(gguf, type_name: str):
    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[type_name]


def mixture_of_experts_refusal(config) -> str | None:
    """Why a transformers ``config`` cannot go to GGUF when it is an MoE model (a routed release
    is one), else None."""
    model_type = getattr(config, "model_type", None) or "unknown"
    if any(getattr(config, key, None) for key in _MOE_KEYS) or "moe" in model_type:
        return (
            f"'{model_type}' is a mixture-of-experts model; GGUF export supports dense "
            f"{' and '.join(SUPPORTED_ARCHS)} models only"
        )
    return None


def check_exportable(config) -> str:
    """Return the GGUF architecture name for ``config`` or raise a one-line NexusError."""
    model_type = getattr(config, "model_type", None) or "unknown"
    if refusal := mixture_of_experts_refusal(config):
        raise NexusError(refusal)
    if model_type not in SUPPORTED_ARCHS:
        raise NexusError(
            f"cannot export architecture '{model_type}' to GGUF: supported are "
            f"{', '.join(SUPPORTED_ARCHS)} (dense)"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        raise NexusError(
            f"cannot export to GGUF: rope scaling '{rope_type}' is not supported by this exporter"
        )
    if getattr(config, "hidden_act", "silu") != "silu":
        raise NexusError(f"cannot export to GGUF: activation '{config.hidden_act}' (llama.cpp expects silu)")
    if model_type == "llama" and (
        getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    ):
        raise NexusError("cannot export to GGUF: Llama with attention/MLP biases is not supported")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise NexusError("cannot export to GGUF: Qwen2 with a sliding attention window is not supported")
    return model_type


def _permute_rotary(weights, n_head: int):
    """llama.cpp's q/k row order: per head, interleaved halves (``convert_hf_to_gguf.py``)."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """The llama.cpp ``tokenizer.ggml.pre`` that splits text as this Hugging Face pre-tokenizer does."""
    steps = [] if pre is None else pre.get("pretokenizers", [pre]) if pre["type"] == "Sequence" else [pre]
    kinds = [step["type"] for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        if pattern == _LLAMA3_SPLIT:
            return "llama-bpe"
        if pattern == _QWEN2_SPLIT:
            return "qwen2"
    raise NexusError(
        f"cannot export the tokenizer to GGUF: its pre-tokenizer ({' + '.join(kinds) or 'none'}) has no "
        "llama.cpp equivalent this exporter knows (GPT-2, SmolLM, Llama 3 or Qwen2 byte-level BPE)"
    )


def _tokenizer_fields(tokenizer, vocab_size: int) -> dict[str, Any]:
    """Tokens, token types, merges and llama.cpp's pre-tokenizer name from a fast BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise NexusError("cannot export the tokenizer to GGUF: it is not a fast (tokenizer.json) tokenizer")
    data = json.loads(backend.to_str())
    model = data["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise NexusError(
            f"cannot export the tokenizer to GGUF: a {model.get('type')} "
            f"{'byte-fallback ' if model.get('byte_fallback') else ''}vocabulary is not supported "
            "(byte-level BPE only)"
        )
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    special: set[int] = set(tokenizer.all_special_ids)
    added: dict[int, bool] = {}
    for entry in data.get("added_tokens", []):
        by_id[entry["id"]] = entry["content"]
        added[entry["id"]] = bool(entry.get("special"))
    size = max(vocab_size, max(by_id) + 1)
    if size > vocab_size:
        raise NexusError(
            f"cannot export to GGUF: the tokenizer has {size} tokens but the model's embedding only {vocab_size}"
        )
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:  # embedding rows past the tokenizer (padding), as llama.cpp's converter does
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
            continue
        tokens.append(by_id[i])
        if i in special or added.get(i):
            types.append(3)  # CONTROL
        elif i in added:
            types.append(4)  # USER_DEFINED
        else:
            types.append(1)  # NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a")["input_ids"]
    return {
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "add_bos": bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id,
        "add_eos": bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id,
    }


def _write_tensor(writer, gguf, name: str, data, qtype, counts: dict[str, int]) -> None:
    """Add one float32 numpy tensor in ``qtype`` (matrices) or F32 (vectors)."""
    import numpy as np

    data = np.ascontiguousarray(data, dtype=np.float32)
    T = gguf.GGMLQuantizationType
    chosen = qtype if data.ndim >= 2 else T.F32
    if chosen == T.Q8_0 and data.shape[-1] % _Q8_BLOCK:
        chosen = T.F16
    if chosen == T.F32:
        writer.add_tensor(name, data)
    elif chosen == T.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, chosen), raw_dtype=chosen)
    counts[chosen.name] = counts.get(chosen.name, 0) + 1


def _inspect(model_dir: str | Path, trust_remote_code: bool):
    """The GGUF architecture, tokenizer and vocabulary fields of a model, or a one-line NexusError,
    read from its config and tokenizer only (no weight)."""
    from nexus.models.loading import _load_config, load_tokenizer, resolve_model

    resolved = resolve_model(str(model_dir))
    config = _load_config(resolved, trust_remote_code)
    arch = check_exportable(config)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    return arch, tokenizer, _tokenizer_fields(tokenizer, config.vocab_size)


def check_source(model: str | Path, *, trust_remote_code: bool = False) -> str:
    """What :func:`export_gguf` refuses before reading any weight (architecture, tokenizer),
    checked for ``model`` without exporting it; returns the GGUF architecture name."""
    return _inspect(model, trust_remote_code)[0]


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    type: str = "f16",  # noqa: A002  (the option's name in the CLI and the issue)
    *,
    name: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ExportResult:
    """Write the model at ``model_dir`` (any model spec: release, HF directory, checkpoint, GGUF)
    to ``out_path`` as one GGUF file of the given ``type`` (f32, f16, bf16 or q8_0).

    The file is written next to ``out_path`` under a temporary name and renamed when complete,
    so a crash never leaves a half-written ``.gguf`` behind.
    """
    if type not in GGUF_TYPES:
        raise NexusError(f"unknown GGUF type '{type}': choose one of {', '.join(GGUF_TYPES)}")
    out_path = Path(out_path).expanduser()
    if out_path.is_dir():
        raise NexusError(f"{out_path} is a directory; give the path of the .gguf file to write")
    if out_path.exists() and not overwrite:
        raise NexusError(f"{out_path} exists; pass --force to replace it")
    if not out_path.parent.is_dir():
        raise NexusError(f"cannot write {out_path}: directory {out_path.parent} does not exist")

    arch, tokenizer, vocab = _inspect(model_dir, trust_remote_code)

    import gguf
    import torch

    from nexus.models.loading import load_model

    model, resolved = load_model(str(model_dir), dtype=torch.float32, trust_remote_code=trust_remote_code)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(
        cfg, "rope_theta", 10000.0
    )

    # A plain new file (not mkstemp's 0600), so the .gguf gets the umask's mode like any other.
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    counts: dict[str, int] = {}
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(resolved.source).name or arch)
        writer.add_file_type(_file_type(gguf, type))
        if type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(n_kv)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_rope_dimension_count(head_dim)
        if head_dim * cfg.num_attention_heads != cfg.hidden_size:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_vocab_size(cfg.vocab_size)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for token_id, add in (
            (tokenizer.bos_token_id, writer.add_bos_token_id),
            (tokenizer.eos_token_id, writer.add_eos_token_id),
            (tokenizer.unk_token_id, writer.add_unk_token_id),
            (tokenizer.pad_token_id, writer.add_pad_token_id),
        ):
            if token_id is not None:
                add(token_id)
        writer.add_add_bos_token(vocab["add_bos"])
        writer.add_add_eos_token(vocab["add_eos"])
        writer.add_add_space_prefix(False)
        if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
        qtype = getattr(gguf.GGMLQuantizationType, type.upper())
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        for key, tensor in model.state_dict().items():
            if tied and key == "lm_head.weight":
                continue  # llama.cpp reuses token_embd when output.weight is absent
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise NexusError(f"cannot export to GGUF: no GGUF name for tensor '{key}'")
            data = tensor.detach().float().numpy()
            if arch == "llama" and gguf_name.endswith("attn_q.weight"):
                data = _permute_rotary(data, cfg.num_attention_heads)
            elif arch == "llama" and gguf_name.endswith("attn_k.weight"):
                data = _permute_rotary(data, n_kv)
            _write_tensor(writer, gguf, gguf_name, data, qtype, counts)
        del model
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    size = out_path.stat().st_size
    log.debug("wrote %s (%s, %.1f MiB)", out_path, type, size / 2**20)
    return ExportResult(out_path, type, arch, sum(counts.values()), size, counts)


# Plain text for `nexus export gguf --check`: any text works, the export never sees it.
CHECK_TEXTS = (
    "The library opened at nine, and by ten every table near the windows was taken by students.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Q: A baker sells 12 loaves a day for 5 days. How many loaves is that?\nA: 12 * 5 = 60 loaves.",
    "To keep bread fresh for longer, store it in a paper bag at room temperature.",
)


@dataclass(frozen=True)
class Agreement:
    """Next-token agreement between a reference model and the exported file (as reloaded)."""

    positions: int
    top1: float  # fraction of positions where both argmaxes agree
    mean_kl: float  # mean KL(reference || export) in nats per position
    max_kl: float


def logits_agreement(pairs) -> Agreement:
    """Top-1 agreement and KL(reference || candidate) over ``(reference, candidate)`` logits pairs,
    each a ``(positions, vocab)`` tensor; pure measurement."""
    import torch

    agree, kls = 0, []
    for ref_logits, got_logits in pairs:
        ref = torch.log_softmax(ref_logits.float(), -1)
        got = torch.log_softmax(got_logits.float(), -1)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kls.append((ref.exp() * (ref - got)).sum(-1))
    kl = torch.cat(kls) if kls else torch.empty(0)
    positions = kl.numel()
    if positions == 0:
        raise NexusError("no tokens to compare: the check texts are empty")
    mean_kl = float(kl.mean())
    return Agreement(
        positions, agree / positions, mean_kl if math.isfinite(mean_kl) else math.inf, float(kl.max())
    )


def next_token_agreement(reference, candidate, tokenizer, texts, max_tokens: int = 256) -> Agreement:
    """Compare two causal LMs' next-token distributions on ``texts``."""
    import torch

    def pairs():  # one text's logits at a time
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
                yield reference(ids).logits[0], candidate(ids).logits[0]

    return logits_agreement(pairs())


def check_export(model_dir: str | Path, gguf_path: str | Path, texts=CHECK_TEXTS) -> Agreement:
    """Load ``gguf_path`` back through Nexus's own GGUF import and compare it with ``model_dir``."""
    from nexus.models.gguf import convert_gguf
    from nexus.models.loading import load_model, load_tokenizer

    reference, resolved = load_model(str(model_dir))
    tokenizer = load_tokenizer(resolved)
    with tempfile.TemporaryDirectory(prefix="nexus-gguf-check-") as tmp:
        converted = convert_gguf(gguf_path, Path(tmp) / "model")
        candidate, _ = load_model(str(converted))
        return next_token_agreement(reference, candidate, tokenizer, texts)
