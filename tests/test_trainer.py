"""The training engine on its own: held-out KL against torch's ``kl_div``, the summary key the
release ranks by, and a few real steps that make held-out KD fall (learning, not just "finite")."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import tiny
import torch
import torch.nn.functional as F

from nexus.data.formats import Example
from nexus.data.packing import encode_examples, pack_documents
from nexus.trainer.divergence import forward_kl_terms, top1_matches
from nexus.trainer.evaluate import evaluate_fidelity, fidelity_metrics, heldout_kd
from nexus.trainer.loop import Trainer
from nexus.trainer.settings import TrainSettings
from nexus.trainer.teacher import LiveTeacherSource


def test_forward_kl_terms_sum_to_torch_kl_div():
    torch.manual_seed(0)
    t = F.log_softmax(torch.randn(7, 11) * 3, -1)
    s = F.log_softmax(torch.randn(7, 11) * 3, -1)
    want = F.kl_div(s, t, log_target=True, reduction="sum")
    assert torch.allclose(forward_kl_terms(t, s).sum(), want, rtol=1e-6)
    assert forward_kl_terms(t, t).sum() == 0
    assert int(top1_matches(s, t.argmax(-1))) == int((s.argmax(-1) == t.argmax(-1)).sum())


def _rows(tokenizer, n: int = 12, seq_len: int = 48):
    examples = [
        Example(kind="text", source=f"test:{i}", text=f"def f{i}(x):\n    return x * {i} + {i % 5}\n")
        for i in range(n)
    ]
    docs = encode_examples(tokenizer, examples)
    return pack_documents(docs, seq_len, pad_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    teacher = tiny.build_model("llama", tiny_tokenizer, num_layers=3, intermediate=96, seed=0)
    student = tiny.build_model("llama", tiny_tokenizer, num_layers=2, intermediate=96, seed=1)
    return teacher, student


def test_evaluation_kl_matches_torch_kl_div_on_full_logits(pair, tiny_tokenizer):
    teacher, student = pair
    rows = _rows(tiny_tokenizer)
    got = evaluate_fidelity(student, LiveTeacherSource(teacher), rows, batch_size=3, chunk_size=7)
    batch = rows.batch(list(range(len(rows))))
    mask = batch["loss_mask"]
    # use_cache=False as the engine runs it: position_ids that restart mark packed documents
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        s, t = student(**inputs).logits[mask], teacher(**inputs).logits[mask]
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum") / len(s)
    assert got["tokens"] == len(s) > 0
    assert got["kd"] == pytest.approx(float(kl), rel=1e-4)
    assert got["top1_agreement"] == pytest.approx(float((s.argmax(-1) == t.argmax(-1)).float().mean()))
    assert heldout_kd(got) == got["kd"] and heldout_kd({"kd_topk": 0.5}) == 0.5 and heldout_kd(None) is None
    bench = fidelity_metrics(t, s)
    assert bench.kl == pytest.approx(float(kl), rel=1e-4) and bench.tokens == len(s)


def test_a_few_steps_lower_heldout_kd_below_step_zero(pair, tiny_tokenizer, tmp_path):
    teacher, student = pair
    student = tiny.build_model("llama", tiny_tokenizer, num_layers=2, intermediate=96, seed=1)
    rows = _rows(tiny_tokenizer, n=24)
    source = LiveTeacherSource(teacher)
    before = evaluate_fidelity(student, source, rows)["kd"]
    settings = TrainSettings(
        max_steps=12, micro_batch_size=4, lr=3e-3, warmup_steps=2, precision="fp32", device="cpu",
        eval_every=0, save_every=100,
    )  # fmt: skip
    summary = Trainer(
        student,
        tokenizer=tiny_tokenizer,
        train=rows,
        heldout=rows,
        teacher=source,
        settings=settings,
        out_dir=tmp_path / "out",
        run_config=settings,
        result_hash=settings.result_hash(),
        results_dir=tmp_path / "results",
    ).fit()
    after = summary["eval"]["kd"]
    assert math.isfinite(after) and after < 0.8 * before, (before, after)
    # step 0 is measured too, in the summary and first in metrics.jsonl's eval lines
    assert summary["eval_start"]["kd"] == pytest.approx(before, rel=1e-5)
    evals = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["split"] == "eval"]
    assert [e["step"] for e in evals] == [0, 12] and evals[0]["kd"] == pytest.approx(before, rel=1e-5)
    assert summary["status"] == "Completed" and summary["step"] == 12
    assert not (tmp_path / "out" / "summary.json").exists()  # the recipe writes it, once


def test_a_phase_that_ends_further_from_the_teacher_says_so_and_resume_keeps_step_zero(
    pair, tiny_tokenizer, tmp_path, caplog
):
    teacher, _ = pair
    # the student starts as the teacher (KD 0): CE alone on other text can only move it away
    student = copy.deepcopy(teacher).requires_grad_(True)
    rows = _rows(tiny_tokenizer, n=24)

    def trainer(max_steps: int) -> Trainer:
        settings = TrainSettings(
            max_steps=max_steps, micro_batch_size=4, lr=3e-3, warmup_steps=1, precision="fp32",
            device="cpu", kd_weight=0.0, ce_weight=1.0, eval_every=0, save_every=4,
        )  # fmt: skip
        return Trainer(
            student, tokenizer=tiny_tokenizer, train=rows, heldout=rows, teacher=LiveTeacherSource(teacher),
            settings=settings, out_dir=tmp_path / "out", run_config=settings,
            result_hash=settings.result_hash(), results_dir=tmp_path / "results",
        )  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="nexus.trainer.loop"):
        first = trainer(4).fit()
    assert first["eval_start"]["kd"] == pytest.approx(0.0, abs=1e-6)
    assert first["eval"]["kd"] > 0.01
    assert "phase 2 left the student further from the teacher: held-out KD 0.000 ->" in caplog.text
    # a resumed run reads the step-0 figure back from metrics.jsonl instead of scoring the new start
    again = trainer(4).fit()
    assert again["resumed_from_step"] == 4 and again["eval_start"] == first["eval_start"]


@pytest.mark.parametrize("kd, ce, message", [(0.0, 0.0, "no loss to train on"), (-1.0, 1.0, "non-negative")])
def test_settings_refuse_loss_weights_that_leave_nothing_to_train(kd, ce, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(kd_weight=kd, ce_weight=ce)


def test_gold_rows_are_scored_by_their_own_answer_not_the_teacher(pair, tiny_tokenizer):
    """gold_weight: a gold row's tokens count gold_weight * CE, whatever the teacher says; the other
    rows keep kd_weight * KD + ce_weight * CE."""
    from nexus.trainer.step import StudentLoss

    teacher, student = pair
    gold = Example("chat", "rag:1", prompt="Where is it? Document: it is in Oslo.", response="In Oslo.",
                   extra={"gold": True})  # fmt: skip
    plain = Example("chat", "chat:1", prompt="Say hi.", response="Hello there, friend.")
    rows = pack_documents(encode_examples(tiny_tokenizer, [gold, plain], loss_on="response"), 64, pad_id=0)
    batch = rows.batch(list(range(len(rows))))
    assert batch["gold_mask"].sum() > 0 and (batch["loss_mask"] & ~batch["gold_mask"]).sum() > 0
    n = float(batch["loss_mask"].sum())

    def loss(settings, source):
        return StudentLoss(student, settings)(batch, source(batch, None), n)[0].item()

    live, other = LiveTeacherSource(copy.deepcopy(teacher)), LiveTeacherSource(copy.deepcopy(student))
    base = {"kd_weight": 0.8, "ce_weight": 0.2}
    with torch.no_grad():
        ungold = loss(TrainSettings(**base), live)
        mixed = loss(TrainSettings(**base, gold_weight=1.5), live)
        changed = loss(TrainSettings(**base, gold_weight=1.5), other)
        logits = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[
            batch["loss_mask"]
        ]
        t_logits = teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[
            batch["loss_mask"]
        ]
    g = batch["gold_mask"][batch["loss_mask"]]
    ce = F.cross_entropy(logits, batch["labels"][batch["loss_mask"]], reduction="none")
    kd = F.kl_div(
        F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="none"
    ).sum(-1)
    assert mixed == pytest.approx(
        float((1.5 * ce[g]).sum() + (0.8 * kd[~g] + 0.2 * ce[~g]).sum()) / n, rel=1e-4
    )
    assert ungold == pytest.approx(float((0.8 * kd + 0.2 * ce).sum()) / n, rel=1e-4)
    # another teacher changes only the non-gold tokens' KD
    assert changed != pytest.approx(mixed)
    # held-out fidelity is measured where the teacher is the target: gold tokens count for CE only
    got = evaluate_fidelity(student, LiveTeacherSource(copy.deepcopy(teacher)), rows, batch_size=4)
    assert got["kd_tokens"] == int((~g).sum()) and got["tokens"] == len(g)
    assert got["kd"] == pytest.approx(float(kd[~g].mean()), rel=1e-4)
    assert got["ce"] == pytest.approx(float(ce.mean()), rel=1e-4)
    with pytest.raises(ValueError, match="non-negative"):
        TrainSettings(gold_weight=-1.0)
