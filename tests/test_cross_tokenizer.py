"""Cross-tokenizer distillation: a teacher and a student with different tokenizers.

Two tiny tokenizers (tests/assets/cross_tokenizer: byte-level BPE with 400 tokens, Metaspace BPE
with 300) and two tiny random Llamas; each loss is checked against a naive loop implementation.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny
import torch

from nexus.cli import main
from nexus.distillation.config import DistillConfig
from nexus.distillation.run import run_distill
from nexus.errors import NexusError
from nexus.trainer.cross_tokenizer import (
    CrossTokenizerKD,
    aligned_pairs,
    char_ends,
    plan_row,
    shared_vocab,
    shared_vocab_kl,
    uld_loss,
)

ASSETS = Path(__file__).parent / "assets" / "cross_tokenizer"
TEXTS = [
    "Tom has 3 apples and buys 12 more. How many apples does Tom have now?",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 40))",
    "The quick brown fox jumps over the lazy dog.  Twice!",
]


@pytest.fixture(scope="module")
def toks():
    from transformers import AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(ASSETS / "student"),
        AutoTokenizer.from_pretrained(ASSETS / "teacher"),
    )


@pytest.fixture(scope="module")
def models(toks, tmp_path_factory):
    s_tok, t_tok = toks
    root = tmp_path_factory.mktemp("xtok")
    teacher = tiny.save_model(tiny.build_model("llama", t_tok, num_layers=2, seed=3), t_tok, root / "teacher")
    student = tiny.save_model(tiny.build_model("llama", s_tok, num_layers=2, seed=4), s_tok, root / "student")
    return student, teacher


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return tiny.write_domain_mix(tmp_path_factory.mktemp("xtok-data") / "mix.jsonl")


def test_the_two_tokenizers_split_the_same_text_differently(toks):
    s_tok, t_tok = toks
    assert len(s_tok) != len(t_tok) and s_tok.get_vocab() != t_tok.get_vocab()
    for text in TEXTS:
        s_ids = s_tok.encode(text, add_special_tokens=False)
        t_ids = t_tok.encode(text, add_special_tokens=False)
        assert s_tok.decode(s_ids) == t_tok.decode(t_ids) == text
        assert s_tok.convert_ids_to_tokens(s_ids) != t_tok.convert_ids_to_tokens(t_ids)


def test_aligned_pairs_are_exactly_the_positions_with_equal_decoded_prefixes(toks):
    s_tok, t_tok = toks
    partial = False
    for text in TEXTS:
        s_ids = s_tok.encode(text, add_special_tokens=False)
        t_ids = t_tok.encode(text, add_special_tokens=False)
        got = aligned_pairs(char_ends(s_tok, s_ids), char_ends(t_tok, t_ids))
        # naive: compare every pair of decoded prefixes; on repeats keep the last position per side
        s_prefix = [s_tok.decode(s_ids[: i + 1]) for i in range(len(s_ids))]
        t_prefix = [t_tok.decode(t_ids[: j + 1]) for j in range(len(t_ids))]
        last_s = {p: i for i, p in enumerate(s_prefix)}
        last_t = {p: j for j, p in enumerate(t_prefix)}
        want = sorted((last_s[p], last_t[p]) for p in last_s if p in last_t)
        assert got == want
        assert 2 < len(got) <= min(len(s_ids), len(t_ids))
        partial |= len(got) < min(len(s_ids), len(t_ids))
    assert partial  # some boundaries coincide, not all


def test_uld_loss_matches_a_naive_sorted_l1(toks):
    gen = torch.Generator().manual_seed(0)
    s_logits = torch.randn(5, 7, generator=gen)
    t_logits = torch.randn(5, 11, generator=gen) * 2
    for temperature in (1.0, 2.0):
        got = float(uld_loss(s_logits, t_logits, temperature))
        want = 0.0
        for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist(), strict=True):
            p = sorted((math.exp(x / temperature) for x in s_row), reverse=True)
            q = sorted((math.exp(x / temperature) for x in t_row), reverse=True)
            p = [x / sum(p) for x in p] + [0.0] * (len(q) - len(p))
            q = [x / sum(q) for x in q]
            want += sum(abs(a - b) for a, b in zip(p, q, strict=True))
        assert got == pytest.approx(want, rel=1e-5)
    # a permutation of the vocabulary does not change it; the same distribution gives 0
    perm = torch.randperm(11, generator=gen)
    assert float(uld_loss(t_logits[:, perm], t_logits)) == pytest.approx(0.0, abs=1e-6)


def test_shared_vocab_maps_tokens_with_identical_strings(toks):
    s_tok, t_tok = toks
    s_ids, t_ids = shared_vocab(s_tok, t_tok)
    assert len(s_ids) == len(t_ids) > 50
    for a, b in zip(s_ids.tolist(), t_ids.tolist(), strict=True):
        assert s_tok.decode([a]) == t_tok.decode([b])
    # naive: every non-special decoded string present on both sides is mapped once
    s_strings = {s_tok.decode([i]) for i in range(len(s_tok)) if i not in s_tok.all_special_ids}
    t_strings = {t_tok.decode([i]) for i in range(len(t_tok)) if i not in t_tok.all_special_ids}
    assert len(s_ids) == len({s for s in s_strings & t_strings if s and "\ufffd" not in s})
    # the spellings differ ("▁the" vs "Ġthe"): a raw-string map would miss these
    assert any(
        s_tok.convert_ids_to_tokens(a) != t_tok.convert_ids_to_tokens(b)
        for a, b in zip(s_ids.tolist(), t_ids.tolist(), strict=True)
    )


def test_shared_vocab_kl_matches_a_naive_renormalised_kl(toks):
    s_tok, t_tok = toks
    s_ids, t_ids = shared_vocab(s_tok, t_tok)
    gen = torch.Generator().manual_seed(1)
    s_logits = torch.randn(4, len(s_tok), generator=gen)
    t_logits = torch.randn(4, len(t_tok), generator=gen) * 1.5
    s_index = {s_tok.decode([i]): i for i in s_ids.tolist()}
    t_index = {t_tok.decode([i]): i for i in t_ids.tolist()}
    for temperature in (1.0, 2.0):
        got = float(shared_vocab_kl(s_logits, t_logits, s_ids, t_ids, temperature))
        want = 0.0
        for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist(), strict=True):
            p = [math.exp(x / temperature) for x in s_row]  # full-vocabulary softmax ...
            q = [math.exp(x / temperature) for x in t_row]
            p = [x / sum(p) for x in p]
            q = [x / sum(q) for x in q]
            shared = sorted(s_index.keys() & t_index.keys())  # ... restricted and renormalised
            ps = [p[s_index[w]] for w in shared]
            qs = [q[t_index[w]] for w in shared]
            ps = [x / sum(ps) for x in ps]
            qs = [x / sum(qs) for x in qs]
            want += sum(b * math.log(b / a) for a, b in zip(ps, qs, strict=True))
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("method", ["uld", "align"])
def test_hook_equals_per_row_naive_loss_and_reaches_the_student(method, toks, models):
    """The batched hook (padded teacher batch, gathered positions) against each row run alone."""
    from transformers import AutoModelForCausalLM

    s_tok, t_tok = toks
    student = AutoModelForCausalLM.from_pretrained(models[0]).float()
    teacher = AutoModelForCausalLM.from_pretrained(models[1]).float()
    kd = CrossTokenizerKD(
        method,
        student=student,
        teacher=teacher,
        student_tokenizer=s_tok,
        teacher_tokenizer=t_tok,
        temperature=1.5,
    )
    rows = [s_tok.encode(t, add_special_tokens=False)[:20] for t in TEXTS]
    width = min(map(len, rows))
    ids = torch.tensor([r[:width] for r in rows])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :3] = False  # an unscored prefix (e.g. a prompt)
    batch = {"input_ids": ids, "loss_mask": mask, "position_ids": torch.arange(width).expand_as(ids)}
    out = student.model(input_ids=ids, use_cache=False)
    loss, metrics = kd(out, batch, 0)

    total, n = 0.0, 0
    with torch.no_grad():
        for r in range(len(rows)):
            plan = plan_row(method, s_tok, t_tok, ids[r].tolist(), mask[r].tolist(), 512)
            assert all(mask[r, i] for i in plan.student_pos)
            s_all = student(input_ids=ids[r : r + 1]).logits[0]
            t_all = teacher(input_ids=torch.tensor([plan.teacher_ids])).logits[0]
            for i, j in zip(plan.student_pos, plan.teacher_pos, strict=True):
                if method == "uld":
                    total += float(uld_loss(s_all[i : i + 1], t_all[j : j + 1], 1.5))
                else:
                    total += float(shared_vocab_kl(s_all[i : i + 1], t_all[j : j + 1], *kd.vocab_map, 1.5))
                n += 1
    assert n == metrics["xkd_positions"] > 0
    assert float(loss) == pytest.approx(total / n, rel=1e-4)
    loss.backward()
    assert student.get_output_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def _cfg(teacher: Path, student: Path, data: Path, out: Path, **kw) -> DistillConfig:
    base = {
        "teacher": str(teacher),
        "student": str(student),
        "data": [str(data)],
        "seq_len": 48,
        "micro_batch_size": 2,
        "max_steps": 3,
        "warmup_steps": 1,
        "save_every": 3,
        "eval_every": 3,
        "precision": "fp32",
        "device": "cpu",
        "out": str(out),
    }
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("method", ["uld", "align"])
def test_distill_trains_a_student_with_another_tokenizer(method, models, data_file, tmp_path):
    student, teacher = models
    out = tmp_path / method
    summary = run_distill(
        _cfg(teacher, student, data_file, out, cross_tokenizer=method), results_dir=tmp_path / "r"
    )
    assert summary["cross_tokenizer"] == method
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3]
    assert all(x["xkd"] > 0 and x["xkd_positions"] > 0 and math.isfinite(x["loss"]) for x in train)
    from nexus.models import load_model

    model, _ = load_model(str(out / "model"))
    assert model.get_output_embeddings().weight.shape[0] == 300  # the student's own vocabulary


def test_other_tokenizer_without_the_option_is_a_one_line_error(models, data_file, tmp_path, capsys):
    student, teacher = models
    with pytest.raises(NexusError, match=r"tokenizers differ .*use --cross-tokenizer uld\|align"):
        run_distill(_cfg(teacher, student, data_file, tmp_path / "o"), results_dir=tmp_path / "r")
    flags = {"teacher": teacher, "student": student, "data": data_file, "out": tmp_path / "o2"}
    code = main(["distill", *[f"--{k}={v}" for k, v in flags.items()], f"--results={tmp_path / 'r2'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]  # (weight-loading bars aside)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.fullmatch(
        r"nexus: error: teacher and student tokenizers differ \(.*\); use --cross-tokenizer uld\|align",
        errors[0],
    ), err


def test_config_checks_and_unchanged_hash_for_none():
    with pytest.raises(ValueError, match="needs --student"):
        DistillConfig(cross_tokenizer="uld")
    with pytest.raises(ValueError, match="drop --cache-teacher"):
        DistillConfig(cross_tokenizer="align", student="s", cache_teacher=True)
    with pytest.raises(ValueError, match="must be one of"):
        DistillConfig(cross_tokenizer="bogus", student="s")
    a, b = DistillConfig(student="s"), DistillConfig(student="s", cross_tokenizer="uld")
    assert (
        a.result_hash()
        != b.result_hash()
        != DistillConfig(student="s", cross_tokenizer="align").result_hash()
    )


def test_empty_plan_gives_zero_loss_with_a_graph(toks, models):
    from transformers import AutoModelForCausalLM

    s_tok, t_tok = toks
    student = AutoModelForCausalLM.from_pretrained(models[0])
    teacher = AutoModelForCausalLM.from_pretrained(models[1])
    kd = CrossTokenizerKD(
        "uld", student=student, teacher=teacher, student_tokenizer=s_tok, teacher_tokenizer=t_tok
    )
    ids = torch.tensor([s_tok.encode(TEXTS[0], add_special_tokens=False)])
    batch = {"input_ids": ids, "loss_mask": torch.zeros_like(ids, dtype=torch.bool)}
    out = SimpleNamespace(last_hidden_state=student.model(input_ids=ids).last_hidden_state)
    loss, metrics = kd(out, batch, 0)
    assert float(loss) == 0.0 and metrics["xkd_positions"] == 0.0 and loss.requires_grad


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xtok-prompts") / "prompts.jsonl"
    rows = [{"prompt": f"Greet person {i}.", "response": f"Hello, friend number {i}!"} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seq_kd_rows_are_the_teachers_answers_in_the_students_tokens(
    toks, models, prompts_file, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from nexus.data.builtin import teacher_answers
    from nexus.data.corpus import build_corpus, load_source

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "answers"))
    s_tok, t_tok = toks
    teacher = AutoModelForCausalLM.from_pretrained(models[1])
    corpus = build_corpus(
        [str(prompts_file)],
        s_tok,
        seq_len=64,
        heldout_fraction=0.0,
        teacher=teacher,
        teacher_tokenizer=t_tok,
        seq_kd=True,
    )
    plain = build_corpus([str(prompts_file)], s_tok, seq_len=64, heldout_fraction=0.0)
    assert corpus.key != plain.key
    text = "".join(
        s_tok.decode(corpus.train.batch(list(range(len(corpus.train))))["input_ids"][r])
        for r in range(len(corpus.train))
    )
    prompts = load_source(str(prompts_file))
    answers = [e.response for e in teacher_answers(teacher, t_tok, prompts, cache=False)]
    assert sum(bool(a.strip()) for a in answers) > len(answers) // 2
    # naive: every non-empty teacher answer is in the packed text, and no original response is
    for a in answers:  # (as the student's tokenizer spells them: <unk> for what it cannot)
        assert s_tok.decode(s_tok.encode(a.strip(), add_special_tokens=False)) in text
    assert "Hello, friend number 3!" not in text and "Hello, friend number 3!" in "".join(
        s_tok.decode(plain.train.batch(list(range(len(plain.train))))["input_ids"][r])
        for r in range(len(plain.train))
    )


def test_seq_kd_baseline_trains_a_student_with_another_tokenizer(models, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "answers"))
    student, teacher = models
    out = tmp_path / "seqkd"
    cfg = _cfg(teacher, student, prompts_file, out, seq_kd=True, kd_weight=0.0, ce_weight=1.0)
    summary = run_distill(cfg, results_dir=tmp_path / "r")
    assert summary["seq_kd"] is True and summary["cross_tokenizer"] == "none"
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in train if x["split"] == "train"]
    assert len(train) == 3 and all(x["ce"] > 0 and "xkd" not in x for x in train)
    assert DistillConfig(student="s").result_hash() != DistillConfig(student="s", seq_kd=True).result_hash()
