"""On-policy distillation (``--lmbda``): prompts, the generated-token mask, determinism, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_distill_run import _cfg as distill_cfg

from nexus.cli import main
from nexus.data.builtin import arithmetic_word_problems, python_source_snippets
from nexus.data.formats import Example
from nexus.data.packing import IGNORE_INDEX, encode_examples, pack_documents
from nexus.distillation.config import DistillConfig
from nexus.distillation.run import run_distill
from nexus.trainer.onpolicy import (
    OnPolicyBatches,
    OnPolicySettings,
    generation_header,
    is_onpolicy_step,
    prompts_from_rows,
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """Chat rows (prompted at the assistant header) and code text (prompted with a prefix)."""
    path = tmp_path_factory.mktemp("onpolicy-data") / "chat.jsonl"
    turns = [(e.prompt, e.response) for e in arithmetic_word_problems(30)]
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns
    ]
    rows += [{"text": e.text} for e in python_source_snippets(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(teacher: Path, data: Path, out: Path, **kw) -> DistillConfig:
    """test_distill_run's tiny config, with room for short completions and every checkpoint kept."""
    base = {"keep_last": 5, "eval_every": 0, "eval_max_rows": 2, "onpolicy_max_new_tokens": 12}
    return distill_cfg(teacher, data, out, **{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_prompts_are_cut_at_the_assistant_header_or_a_text_prefix(tiny_tokenizer):
    tok = tiny_tokenizer
    header = generation_header(tok)
    assert tok.decode(header) == "<|im_start|>assistant\n"
    examples = [
        Example(kind="chat", prompt="What is 2 plus 3?", response="2 + 3 = 5", source="a"),
        Example(kind="text", text="def f(x):\n    return x * 2 + 1\n" * 3, source="b"),
    ]
    docs = encode_examples(tok, examples)
    rows = pack_documents(docs, 256, tok.pad_token_id)
    prompts = prompts_from_rows(rows, tok, prompt_tokens=8, max_prompt_len=200)
    assert len(prompts) == 2  # the row padding gives none
    chat = tok.decode(prompts[0])
    assert chat.endswith("<|im_start|>assistant\n") and "What is 2 plus 3?" in chat and "= 5" not in chat
    assert prompts[1].tolist() == docs[1].ids[:8]
    # the prompt is cut from the left to leave room for the completion
    short = prompts_from_rows(rows, tok, prompt_tokens=8, max_prompt_len=5)
    assert short[0].tolist() == prompts[0][-5:].tolist()


def test_onpolicy_draw_is_a_pure_function_of_seed_and_step():
    half = OnPolicySettings(lmbda=0.5, max_new_tokens=4, temperature=1.0, seed=3)
    draws = [is_onpolicy_step(s, half) for s in range(200)]
    assert draws == [is_onpolicy_step(s, half) for s in range(200)]
    assert 70 < sum(draws) < 130
    assert not any(is_onpolicy_step(s, OnPolicySettings(0.0, 4, 1.0, 3)) for s in range(50))
    assert all(is_onpolicy_step(s, OnPolicySettings(1.0, 4, 1.0, 3)) for s in range(50))


def test_generated_batch_scores_only_the_completion(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    tok = tiny_tokenizer
    prompts = [
        np.asarray(tok("Hello there")["input_ids"]),
        np.asarray(tok("What is 1 + 1? The answer")["input_ids"]),
    ]
    op = OnPolicyBatches(
        prompts,
        OnPolicySettings(lmbda=1.0, max_new_tokens=6, temperature=1.0, seed=0),
        pad_id=tok.pad_token_id,
        eos_ids=[tok.eos_token_id],
        precision="fp32",
    )
    model.train()
    idx = np.array([0, 1])
    first = op.generate(model, idx, device=torch.device("cpu"), seed_words=(5, 0))
    again = op.generate(model, idx, device=torch.device("cpu"), seed_words=(5, 0))
    assert model.training  # back in training mode
    assert [c.tolist() for c in first] == [c.tolist() for c in again]  # seeded, global RNG untouched
    batch = op.batch(idx, first)
    for i, (p, c) in enumerate(zip(prompts, first, strict=True)):
        mask = batch["loss_mask"][i].numpy()
        scored = np.flatnonzero(mask)
        # position t predicts token t + 1: exactly the generated tokens are targets
        assert scored.tolist() == list(range(len(p) - 1, len(p) + len(c) - 1))
        assert batch["labels"][i, scored].tolist() == c.tolist()
        assert batch["input_ids"][i, : len(p)].tolist() == p.tolist()
        assert (batch["labels"][i, : len(p) - 1] == IGNORE_INDEX).all()
        n = len(p) + len(c)
        assert batch["position_ids"][i, :n].tolist() == list(range(n))
        assert len(c) <= 6


def test_lmbda_one_trains_on_generated_tokens_only(tiny_llama_dir, data_file, tmp_path):
    out = tmp_path / "op"
    summary = run_distill(_cfg(tiny_llama_dir, data_file, out, lmbda=1.0), results_dir=tmp_path / "results")
    assert summary["onpolicy"]["steps"] == 4 and summary["onpolicy"]["prompts"] > 10
    rows = [r for r in _rows(out) if r["split"] == "train"]
    assert [r["onpolicy"] for r in rows] == [1.0] * 4
    for r in rows:
        # 2 rows x at most 12 generated tokens: only those are scored (a corpus row scores ~60)
        assert 1 <= r["completion_tokens"] <= 12
        assert r["tokens_seen"] < 4 * 2 * 64
        assert np.isfinite(r["loss"]) and r["kd"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    # summary.json's tokens/s: the tokens of the steps after the first over their time, from the
    # same per-step figures as metrics.jsonl (not global batch x seq_len, a corpus step's size)
    tokens = np.diff([0] + [r["tokens_seen"] for r in rows])[1:]
    seconds = tokens / np.array([r["tokens_per_s"] for r in rows])[1:]
    assert summary["tokens_per_second"] == pytest.approx(tokens.sum() / seconds.sum(), rel=1e-6)
    assert json.loads((out / "summary.json").read_text())["tokens_per_second"] == summary["tokens_per_second"]


def test_lmbda_zero_config_hashes_and_trains_as_before(tiny_llama_dir, data_file, tmp_path):
    base = _cfg(tiny_llama_dir, data_file, tmp_path / "a")
    assert (
        base.result_hash()
        == _cfg(tiny_llama_dir, data_file, tmp_path / "a", onpolicy_temperature=0.3).result_hash()
    )
    assert base.result_hash() != _cfg(tiny_llama_dir, data_file, tmp_path / "a", lmbda=0.5).result_hash()
    run_distill(base, results_dir=tmp_path / "results")
    assert all("onpolicy" not in r for r in _rows(tmp_path / "a"))


def test_resume_mid_run_equals_an_uninterrupted_run(tiny_llama_dir, data_file, tmp_path):
    kw = {"lmbda": 0.5, "max_steps": 6, "save_every": 2, "grad_accum": 2}
    full = tmp_path / "full"
    summary = run_distill(_cfg(tiny_llama_dir, data_file, full, **kw), results_dir=tmp_path / "results")
    assert 0 < summary["onpolicy"]["steps"] < 6  # a mix of both kinds of step (seed 0)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    again = run_distill(_cfg(tiny_llama_dir, data_file, resumed, **kw), results_dir=tmp_path / "results")
    assert again["resumed_from_step"] == 2
    ref, got = (load_file(str(d / "model" / "model.safetensors")) for d in (full, resumed))
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    strip = ("generate_s", "tokens_per_s")
    tail = [{k: v for k, v in r.items() if k not in strip} for r in _rows(full) if r["step"] > 2]
    assert tail == [{k: v for k, v in r.items() if k not in strip} for r in _rows(resumed)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lmbda", "1.5"], "lmbda must be in [0, 1], got 1.5"),
        (["--lmbda", "-0.1"], "lmbda must be in [0, 1], got -0.1"),
        (["--lmbda", "0.5", "--cache-teacher"], "drop --cache-teacher"),
        (["--lmbda", "0.5", "--onpolicy-max-new-tokens", "64"], "must be below seq_len"),
        (["--onpolicy-temperature", "-1"], "onpolicy_temperature must be >= 0"),
    ],
)
def test_bad_onpolicy_values_are_one_line_errors(tiny_llama_dir, data_file, tmp_path, capsys, flags, message):
    argv = ["distill", "--teacher", str(tiny_llama_dir), "--data", str(data_file), "--seq-len", "64",
            "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"), "--onpolicy-max-new-tokens", "16", *flags]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bf16_decoding_copy_follows_the_trained_weights(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    prompts = [np.asarray(tok("def f(x):")["input_ids"])] * 2

    def fresh() -> OnPolicyBatches:
        settings = OnPolicySettings(lmbda=1.0, max_new_tokens=8, temperature=0.0, seed=0)
        return OnPolicyBatches(prompts, settings, pad_id=tok.pad_token_id, eos_ids=[], precision="bf16")

    op, idx, cpu = fresh(), np.array([0, 1]), torch.device("cpu")
    before = op.generate(model, idx, device=cpu, seed_words=(0, 0))
    assert next(op._shadow.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the master weights stay float32
    with torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():  # "a training step" that changes the greedy output
            p.add_(torch.randn_like(p))
    after = op.generate(model, idx, device=cpu, seed_words=(0, 0))
    assert [c.tolist() for c in after] == [
        c.tolist() for c in fresh().generate(model, idx, device=cpu, seed_words=(0, 0))
    ]
    assert [c.tolist() for c in after] != [c.tolist() for c in before]


@pytest.mark.slow  # ~1 min on the shared 2-core machine (three process start-ups)
def test_ddp_two_processes_match_one_process_on_policy(tiny_llama_dir, data_file, tmp_path):
    """Each global micro-batch slot samples with its own seed, so two DDP processes generate what
    one process with gradient accumulation does; the losses then agree as in off-policy DDP."""
    import os
    import subprocess
    import sys

    from test_distill_distributed import _args, _losses

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    extra = [
        "--lmbda",
        "1",
        "--onpolicy-max-new-tokens",
        "12",
        "--set",
        "max_steps=3",
        "--set",
        "save_every=3",
    ]
    single, double = tmp_path / "one" / "distill", tmp_path / "two" / "distill"
    subprocess.run([sys.executable, "-m", "nexus", *_args(tiny_llama_dir, data_file, single, 2, 2), *extra],
                   env=env, check=True, capture_output=True)  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nexus",
         *_args(tiny_llama_dir, data_file, double, 2, 1), *extra],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = _losses(single), _losses(double)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (one, two)
    rows = [json.loads(x) for x in (double / "metrics.jsonl").read_text().splitlines()]
    assert [r["onpolicy"] for r in rows if r["split"] == "train"] == [1.0] * 3
