"""GGUF export: tiny Llama / Qwen2 models written by `nexus export gguf` load back through Nexus's
own GGUF import with the same next-token distributions, tokenizer and chat template; models the
format cannot hold are refused in one line. Slow tests do the same on the real default teacher
and, where llama-cpp-python is installed, run the file in llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nexus.errors import NexusError
from nexus.models import load_model, load_tokenizer
from nexus.models.gguf_export import (
    _LLAMA3_SPLIT,
    _QWEN2_SPLIT,
    _pre_tokenizer_name,
    check_export,
    export_gguf,
    logits_agreement,
    next_token_agreement,
)

TEXTS = (
    "A baker sells 12 loaves a day for 5 days. How many loaves is that? 12 * 5 = 60.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
)


def _reader_fields(path: Path) -> tuple[dict, dict]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type")):
            continue
        fields[key] = field.contents()
    return fields, {t.name: t.tensor_type.name for t in reader.tensors}


@pytest.fixture(scope="module")
def peaked_models(tmp_path_factory, tiny_tokenizer):
    """Tiny Llama (tied) and Qwen2 (untied) models with larger weights, so next-token
    distributions are peaked and top-1 is not decided by float noise between near-ties."""
    import tiny

    dirs = {}
    for family, tie, seed in (("llama", True, 0), ("qwen2", False, 1)):
        model = tiny.build_model(family, tiny_tokenizer, num_layers=2, seed=seed, tie=tie)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim == 2:
                    param.normal_(0.0, 0.1 if "embed" in name or "lm_head" in name else 0.08)
                elif name.endswith("bias"):
                    param.normal_(0.0, 0.05)
        dirs[family] = tiny.save_model(model, tiny_tokenizer, tmp_path_factory.mktemp(f"peaked-{family}"))
    return dirs


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_f32_export_reloads_exactly(peaked_models, tmp_path, monkeypatch, family):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    out = export_gguf(peaked_models[family], tmp_path / "m.gguf", "f32")
    assert out.architecture == family and out.tensor_types == {"F32": out.tensors}
    reference, _ = load_model(str(peaked_models[family]))
    reloaded, resolved = load_model(str(out.path))  # the project's own GGUF import
    assert resolved.kind == "gguf"
    ids = load_tokenizer(str(peaked_models[family]))(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = reference(ids).logits, reloaded(ids).logits
    assert (expected - got).abs().max().item() < 1e-4 * expected.abs().max().item()
    assert reloaded.config.tie_word_embeddings == reference.config.tie_word_embeddings


@pytest.mark.parametrize(
    ("family", "kind", "min_top1", "max_kl"),
    [
        ("llama", "f16", 0.99, 1e-4),
        ("llama", "bf16", 0.95, 1e-3),
        ("llama", "q8_0", 0.95, 1e-3),
        ("qwen2", "f16", 0.99, 1e-4),
        ("qwen2", "q8_0", 0.95, 1e-3),
    ],
)
def test_reduced_types_match_next_token_distributions(
    peaked_models, tmp_path, monkeypatch, family, kind, min_top1, max_kl
):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    out = export_gguf(peaked_models[family], tmp_path / "m.gguf", kind)
    agreement = check_export(peaked_models[family], out.path, TEXTS)
    assert agreement.positions > 40
    assert agreement.top1 >= min_top1, agreement
    assert 0.0 < agreement.mean_kl < max_kl, agreement  # reduced precision is not bit-exact
    _, tensors = _reader_fields(out.path)
    assert tensors["blk.0.attn_q.weight"] == kind.upper()
    assert tensors["blk.0.attn_norm.weight"] == "F32"  # vectors stay f32, as llama.cpp keeps them
    if family == "qwen2":
        assert tensors["blk.0.attn_q.bias"] == "F32" and "output.weight" in tensors
    else:
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd


def test_sizes_shrink_with_the_type(peaked_models, tmp_path):
    sizes = {
        k: export_gguf(peaked_models["llama"], tmp_path / f"{k}.gguf", k).bytes
        for k in ("f32", "f16", "q8_0")
    }
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def test_metadata_tokenizer_and_chat_template(peaked_models, tiny_tokenizer, tmp_path, monkeypatch):
    from gguf import GGUFReader

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    out = export_gguf(peaked_models["llama"], tmp_path / "m.gguf", "q8_0", name="tiny-student")
    fields, _ = _reader_fields(out.path)
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-student"
    assert fields["general.file_type"] == 7  # MOSTLY_Q8_0
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"] == tiny_tokenizer.chat_template
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.block_count"] == 2
    reader = GGUFReader(str(out.path))
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert types[tokens.index("<|im_end|>")] == 3 and types[tokens.index("Ġthe")] == 1

    reloaded = load_tokenizer(str(out.path))
    text = "Hello world, 12 + 30 = 42"
    assert reloaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def test_q8_0_falls_back_to_f16_for_rows_not_a_multiple_of_32(tiny_tokenizer, tmp_path, monkeypatch):
    import tiny

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny.build_model(
        "llama", tiny_tokenizer, num_layers=1, hidden=48, intermediate=96, heads=4, kv_heads=2
    )
    src = tiny.save_model(model, tiny_tokenizer, tmp_path / "odd")
    out = export_gguf(src, tmp_path / "odd.gguf", "q8_0")
    _, tensors = _reader_fields(out.path)
    assert tensors["blk.0.attn_q.weight"] == "F16"  # rows of 48
    assert tensors["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 96
    assert check_export(src, out.path, TEXTS).mean_kl < 1e-3


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert _pre_tokenizer_name(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert _pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    for pattern, name in ((_LLAMA3_SPLIT, "llama-bpe"), (_QWEN2_SPLIT, "qwen2")):
        split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
        seq = {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
        assert _pre_tokenizer_name(seq) == name
    with pytest.raises(NexusError, match="Whitespace"):
        _pre_tokenizer_name({"type": "Whitespace"})


def test_agreement_of_a_model_with_itself_is_perfect(peaked_models):
    model, resolved = load_model(str(peaked_models["llama"]))
    agreement = next_token_agreement(model, model, load_tokenizer(resolved), TEXTS)
    assert agreement.top1 == 1.0 and agreement.mean_kl == pytest.approx(0.0, abs=1e-7)


def test_logits_agreement_against_a_naive_reference():
    import numpy as np

    rng = np.random.default_rng(0)
    ref, got = rng.normal(size=(2, 7, 11)) * 3
    got[:3] = ref[:3]  # three identical positions, the other four differ
    p, q = (np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (ref, got))
    kl = (p * np.log(p / q)).sum(-1)
    agreement = logits_agreement(
        [(torch.tensor(ref[:4]), torch.tensor(got[:4])), (torch.tensor(ref[4:]), torch.tensor(got[4:]))]
    )
    assert agreement.positions == 7
    assert agreement.top1 == pytest.approx((ref.argmax(-1) == got.argmax(-1)).mean())
    assert agreement.mean_kl == pytest.approx(kl.mean(), rel=1e-4) and agreement.max_kl == pytest.approx(
        kl.max(), rel=1e-4
    )
    with pytest.raises(NexusError, match="no tokens"):
        logits_agreement([])


def test_cli_writes_checks_and_refuses_to_overwrite(peaked_models, tmp_path, monkeypatch, capsys):
    from nexus.cli import main

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "student.gguf"
    assert main(["export", "gguf", str(peaked_models["llama"]), str(out), "--type", "q8_0", "--check"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (llama, q8_0," in printed and "check: top-1 agreement" in printed
    assert not list(tmp_path.glob(".student.gguf.*"))  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not a 0600 temporary

    assert main(["export", "gguf", str(peaked_models["llama"]), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"nexus: error: {out} exists; pass --force to replace it"
    assert main(["export", "gguf", str(peaked_models["llama"]), str(out), "--force"]) == 0


def _save_tiny(family: str, tokenizer, out: Path, **extra) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        **extra,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    ("family", "extra", "message"),
    [
        (
            "mixtral",
            {"num_local_experts": 4, "num_experts_per_tok": 2},
            "'mixtral' is a mixture-of-experts model",
        ),
        ("qwen2_moe", {"num_experts": 4, "moe_intermediate_size": 32}, "'qwen2_moe' is a mixture-of-experts"),
        ("gpt2", {}, "cannot export architecture 'gpt2' to GGUF"),
        ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
        ("llama", {"attention_bias": True}, "attention/MLP biases"),
    ],
)
def test_unsupported_models_are_one_line_errors(tiny_tokenizer, tmp_path, capsys, family, extra, message):
    from nexus.cli import main

    if family == "gpt2":
        extra = {"n_embd": 32, "n_layer": 1, "n_head": 2}
    src = _save_tiny(family, tiny_tokenizer, tmp_path / family, **extra)
    capsys.readouterr()  # drop save_pretrained's progress bar
    assert main(["export", "gguf", str(src), str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nexus: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf.*"))


def test_bad_paths_and_types_are_one_line_errors(peaked_models, tmp_path, capsys):
    from nexus.cli import main

    src = str(peaked_models["llama"])
    for argv, message in (
        ([src, str(tmp_path / "missing" / "x.gguf")], "does not exist"),
        ([src, str(tmp_path)], "is a directory"),
        ([str(tmp_path / "nope"), str(tmp_path / "x.gguf")], "model not found"),
    ):
        assert main(["export", "gguf", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nexus: error: ") and message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["export", "gguf", src, str(tmp_path / "x.gguf"), "--type", "q4_0"])
    assert exc.value.code == 2
    with pytest.raises(NexusError, match="unknown GGUF type 'q4_0'"):
        export_gguf(src, tmp_path / "x.gguf", "q4_0")


# --- the real default teacher ---------------------------------------------------------------


def _held_out_texts(shared: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in (shared / "piqa" / "valid.jsonl").read_text().splitlines()[:n]]
    return [f"{r['goal']} {r['sol1' if r['label'] == 0 else 'sol2']}" for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "min_top1", "max_kl"), [("f16", 0.99, 1e-3), ("q8_0", 0.95, 2e-2)])
def test_default_teacher_export_matches(shared_data, tmp_path, kind, min_top1, max_kl):
    out = export_gguf("default", tmp_path / f"teacher-{kind}.gguf", kind)
    agreement = check_export("default", out.path, _held_out_texts(shared_data, 24))
    assert agreement.positions > 500
    assert agreement.top1 >= min_top1, agreement
    assert agreement.mean_kl < max_kl, agreement


_LLAMA_CPP_SCRIPT = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False, logits_all=False)
out = []
for prompt in json.loads(sys.argv[2]):
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    gen = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if tok == llm.token_eos() or len(gen) == int(sys.argv[3]):
            break
        gen.append(tok)
    out.append({"prompt_ids": ids, "ids": gen})
print(json.dumps(out))
"""


def _llama_cpp_python() -> str:
    """An interpreter that has llama_cpp: $NEXUS_LLAMA_CPP_PYTHON, else this one if it has it."""
    candidate = os.environ.get("NEXUS_LLAMA_CPP_PYTHON", sys.executable)
    probe = subprocess.run([candidate, "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(
            "llama-cpp-python is not installed (set NEXUS_LLAMA_CPP_PYTHON to an interpreter with it)"
        )
    return candidate


@pytest.mark.slow
def test_default_teacher_export_runs_in_llama_cpp(tmp_path):
    python = _llama_cpp_python()
    out = export_gguf("default", tmp_path / "teacher-f16.gguf", "f16")
    model, resolved = load_model("default")
    tokenizer = load_tokenizer(resolved)
    questions = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 5?"]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    new_tokens = 16
    run = subprocess.run(
        [python, "-c", _LLAMA_CPP_SCRIPT, str(out.path), json.dumps(prompts), str(new_tokens)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for prompt, result in zip(prompts, results, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert result["prompt_ids"] == ids[0].tolist()  # llama.cpp tokenizes as the release does
        with torch.no_grad():
            greedy = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1] :]
        reference = [t for t in greedy.tolist() if t != tokenizer.eos_token_id]
        assert result["ids"] == reference[: len(result["ids"])] and len(result["ids"]) > 0
