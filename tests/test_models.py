"""Model I/O: resolving specs, loading HF directories, refusing bad input, describing models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from nexus.errors import NexusError
from nexus.models import load_model, load_tokenizer, model_info, resolve_model


def test_load_hf_directory_matches_saved_model(tiny_llama_dir):
    model, resolved = load_model(str(tiny_llama_dir))
    assert resolved.kind == "hf"
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert load_tokenizer(resolved).pad_token is not None


def test_info_reads_headers(tiny_qwen2_dir):
    info = model_info(str(tiny_qwen2_dir))
    assert info["architecture"] == "Qwen2ForCausalLM"
    assert info["layers"] == 4 and info["hidden_size"] == 64
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["dtype"] == "float32"


def test_checkpoint_and_release_kinds(tiny_llama_dir, tmp_path):
    checkpoint = tmp_path / "checkpoint-10"
    shutil.copytree(tiny_llama_dir, checkpoint / "model")
    assert resolve_model(str(checkpoint)).kind == "checkpoint"
    release = tmp_path / "release"
    shutil.copytree(tiny_llama_dir, release)
    (release / "nexus_manifest.json").write_text("{}")
    assert resolve_model(str(release)).kind == "release"


def test_missing_path(tmp_path):
    with pytest.raises(NexusError, match="model not found"):
        resolve_model(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(NexusError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_truncated_safetensors(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(NexusError, match="corrupt.*truncated"):
        load_model(str(broken))


def test_pickle_refused_unless_trusted(tiny_llama_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    state = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(NexusError, match="pickled"):
        load_model(str(pickled))
    model, _ = load_model(str(pickled), trust_pickle=True)
    assert model.config.num_hidden_layers == 4


def test_unsupported_architecture(tiny_llama_dir, tmp_path):
    other = tmp_path / "vit"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "vit"
    config["architectures"] = ["ViTModel"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(NexusError, match="unsupported architecture .vit."):
        load_model(str(other))
    config["model_type"] = "no-such-arch"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(NexusError, match="unsupported architecture"):
        load_model(str(other))
