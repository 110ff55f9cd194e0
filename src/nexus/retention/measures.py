"""What each measure of the retention report scores on one model, per row.

Every measure returns plain per-row outcomes (JSON, cached by :mod:`nexus.retention.run`), so
that any two models scored on the same rows can be compared pairwise:

* benchmark tasks (PIQA, the held-out GSM8K split, HumanEval, the built-in code/math/chat suite):
  ``correct`` per item, by the benchmark's own scoring (:func:`nexus.benchmark.runner.score_batch`);
  PIQA also records each row's side of :func:`nexus.data.splits.tuning_side` (tune / untuned);
* ``heldout``: per held-out text, KL(teacher || student) and top-1 agreement (the benchmark's
  :func:`~nexus.benchmark.runner.fidelity_batches`) and bits per byte of the text;
* ``grounding``: ``correct`` per question of the held-out grounding set
  (:mod:`nexus.benchmark.grounding`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nexus.benchmark.config import BenchmarkConfig
from nexus.retention.config import RetentionConfig

# Held-out text for KL / agreement / bits per byte: the evaluation-split rows of the shared sets
# (prompt + reference answer), which no training reader ever returns (nexus.data.splits).
HELDOUT_TASKS = ("piqa", "gsm8k", "code_alpaca", "self_instruct")
TASK_MEASURES = ("piqa", "gsm8k", "humaneval", "builtin-code", "builtin-math", "builtin-chat")


def bench_config(cfg: RetentionConfig) -> BenchmarkConfig:
    """The benchmark settings the task measures score with."""
    return BenchmarkConfig(
        precision=cfg.precision,
        device=cfg.device,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
        allow_unsandboxed_code=cfg.allow_unsandboxed_code,
        fidelity_max_length=cfg.heldout_max_length,
    )


def _data_dir(cfg: RetentionConfig) -> Path | None:
    return Path(cfg.data_dir) if cfg.data_dir else None


def load_measure_task(name: str, cfg: RetentionConfig):
    from nexus.benchmark.tasks import load_task, resolve_task_specs

    (spec,) = resolve_task_specs([name], _data_dir(cfg))
    return load_task(spec, limit=cfg.limit(name), seed=cfg.seed)


def score_task(lm, task, cfg: RetentionConfig) -> dict[str, Any]:
    """``correct`` per item of ``task`` (and PIQA's tune/untuned side), by the benchmark's rules."""
    from nexus.benchmark.runner import score_batch
    from nexus.benchmark.sandbox import require_isolation

    bench = bench_config(cfg)
    if task.spec.kind == "code":
        require_isolation(bench.allow_unsandboxed_code)  # no confinement: this cell says so
    size = bench.loglik_items if task.spec.kind == "choice" else bench.batch_size
    correct: list[bool] = []
    for start in range(0, len(task.items), size):
        correct += [
            bool(r["correct"]) for r in score_batch(lm, task, task.items[start : start + size], bench)
        ]
    out: dict[str, Any] = {"ids": [it.id for it in task.items], "correct": correct}
    if task.name == "piqa":
        out["side"] = tuning_sides(task)
    return out


def tuning_sides(task) -> list[str]:
    """Each item's part of :func:`nexus.data.splits.tuning_side` (tune / untuned), from its row."""
    from nexus.data.formats import example_from_row, read_rows
    from nexus.data.splits import tuning_side

    path = Path(task.spec.source)
    rows = {f"{path}:{line}": row for line, row in read_rows(path)}
    return [tuning_side(example_from_row(rows[it.id], it.id)) for it in task.items]


def heldout_texts(cfg: RetentionConfig) -> list[str]:
    from nexus.benchmark.runner import fidelity_texts
    from nexus.benchmark.tasks import load_task, resolve_task_specs

    tasks = [load_task(s, limit=None) for s in resolve_task_specs(list(HELDOUT_TASKS), _data_dir(cfg))]
    return fidelity_texts(tasks, cfg.heldout_limit or sum(len(t.items) for t in tasks))


def score_heldout(teacher, student, texts: list[str], cfg: RetentionConfig) -> dict[str, Any]:
    """Per text: KL(teacher || student) and top-1 agreement (None for the teacher itself) and the
    student's bits per byte (log2-loss of each next token over the UTF-8 bytes the text holds
    after its first token, which nothing predicts)."""
    import torch.nn.functional as F

    from nexus.benchmark.runner import fidelity_batches
    from nexus.trainer.evaluate import fidelity_metrics

    kl: list[float] = []
    top1: list[float] = []
    bpb: list[float] = []
    tok = student.tokenizer
    batches = fidelity_batches(teacher, student, texts, bench_config(cfg))
    for t_logits, s_logits, mask, ids in batches:
        logp = F.log_softmax(s_logits[:, :-1].float(), dim=-1)
        scored = mask[:, 1:] & mask[:, :-1]  # a real token predicted from a real one (either padding side)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * scored  # (B, T-1)
        for row in range(ids.shape[0]):
            kept = ids[row][mask[row]].tolist()
            nbytes = len(tok.decode(kept).encode()) - len(tok.decode(kept[:1]).encode())
            bpb.append(float(nll[row].sum()) / math.log(2) / max(1, nbytes))
            if t_logits is not None:
                fid = fidelity_metrics(t_logits[row], s_logits[row], mask[row])
                kl.append(fid.kl)
                top1.append(fid.top1_agreement)
        del logp, nll
    out: dict[str, Any] = {"ids": list(range(len(bpb))), "bpb": bpb}
    if teacher is not None:
        out.update(kl=kl, top1=top1)
    return out


def score_grounding(lm, tower, cfg: RetentionConfig) -> dict[str, Any]:
    from nexus.benchmark import grounding
    from nexus.benchmark.grounding_sets import heldout_set
    from nexus.benchmark.tasks import select_indices
    from nexus.inference.session import ChatOptions

    questions = heldout_set().questions
    chosen = [questions[i] for i in select_indices(len(questions), cfg.grounding_limit, cfg.seed)]
    records = grounding.evaluate(
        lm.model, lm.tokenizer, tower, chosen, ChatOptions(max_new_tokens=cfg.grounding_max_new_tokens)
    )
    return {
        "ids": [q.text for q in chosen],
        "correct": [bool(r["right"]) for r in records],
        "type": [r["type"] for r in records],
    }
