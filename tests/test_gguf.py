"""GGUF: a tiny Llama written with the `gguf` package loads back through Nexus's converter,
the converted directory is cached by file hash and rebuilt when the file changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nexus.models import convert_gguf, gguf_cache_dir, load_model, load_tokenizer

IDS = torch.tensor([[1, 17, 42, 99, 5, 23, 64, 8, 120, 3]])


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py), which transformers undoes on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path, quant: str = "F32") -> Path:
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)

    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for key, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            name = "output.weight"
        else:
            _, _, layer, module = key.split(".", 3)
            module = module.removesuffix(".weight")
            name = f"blk.{layer}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                data = _permute(data, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                data = _permute(data, cfg.num_key_value_heads)
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def tiny_llama(tiny_tokenizer):
    import tiny

    return tiny.build_model("llama", tiny_tokenizer, num_layers=2, hidden=64, intermediate=128)


@pytest.mark.parametrize(("quant", "tolerance"), [("F32", 1e-4), ("Q8_0", 0.05)])
def test_gguf_round_trip(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch, quant, tolerance):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    path = write_llama_gguf(tiny_llama, tiny_tokenizer, tmp_path / f"tiny-{quant}.gguf", quant)
    model, resolved = load_model(str(path))
    assert resolved.kind == "gguf"
    assert Path(resolved.path) == gguf_cache_dir(path)
    with torch.no_grad():
        expected, got = tiny_llama(IDS).logits, model(IDS).logits
    assert (expected - got).abs().max().item() < tolerance * expected.abs().max().item()
    # the converted directory is a plain HF checkpoint: no quantization config, plain transformers loads it
    config = json.loads((Path(resolved.path) / "config.json").read_text())
    assert "quantization_config" not in config
    assert AutoModelForCausalLM.from_pretrained(resolved.path).config.num_hidden_layers == 2
    tokenizer = load_tokenizer(resolved)
    assert tokenizer("Hello world")["input_ids"] == tiny_tokenizer("Hello world")["input_ids"]
    assert AutoTokenizer.from_pretrained(resolved.path).chat_template == tiny_tokenizer.chat_template


def test_gguf_cache_reused_then_rebuilt_on_change(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    path = write_llama_gguf(tiny_llama, tiny_tokenizer, tmp_path / "tiny.gguf")
    first = convert_gguf(path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp, "second load must reuse the cache"

    with torch.no_grad():
        tiny_llama.model.norm.weight.mul_(2.0)
    write_llama_gguf(tiny_llama, tiny_tokenizer, path)
    second = convert_gguf(path)
    assert second != first
    reloaded, _ = load_model(str(path))
    assert torch.allclose(reloaded.model.norm.weight, tiny_llama.model.norm.weight)


def test_convert_command_writes_directory(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    from nexus.cli import main

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    path = write_llama_gguf(tiny_llama, tiny_tokenizer, tmp_path / "tiny.gguf")
    assert main(["models", "convert", str(path), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["models", "convert", str(path), str(tmp_path / "out")]) == 0  # same file: reused


@pytest.mark.slow
def test_default_teacher_generates_sensible_answer():
    model, resolved = load_model("default")
    tokenizer = load_tokenizer(resolved)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
