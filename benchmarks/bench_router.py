"""Dense vs routed student at equal training tokens, on the default teacher and shared-data domains.

    .venv/bin/python benchmarks/bench_router.py [--student DIR] [--steps 20] [--keep 10]

Without --student the student is the default teacher pruned to --keep evenly spread layers.
Both arms start from the same student and train the same steps on the same rows with KD from the
teacher: the dense arm through phase 3 (kd only), the routed arm through phase 4. Prints held-out
KD, top-1 agreement, PIQA accuracy (the benchmark's log-likelihood rule, fp32; --piqa rows drawn with its seed, 0 = all),
generation tokens/s, router entropy and load per domain before/after.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = [
    str(SHARED / "gsm8k/train.jsonl"),
    str(SHARED / "code_alpaca/code_alpaca_2k.json"),
    str(SHARED / "chat_prompts/user_oriented_instructions.jsonl"),
]


def piqa_accuracy(path: Path, rows: int | None) -> float:
    """PIQA accuracy (``acc``, lm-evaluation-harness rule) through the benchmark's own scoring."""
    from nexus.benchmark.runner import BenchmarkConfig, load_for_benchmark, task_accuracy
    from nexus.benchmark.tasks import load_task, resolve_task_specs

    cfg = BenchmarkConfig(precision="fp32")
    task = load_task(resolve_task_specs(["piqa"], SHARED)[0], limit=rows or None, seed=cfg.seed)
    return task_accuracy(load_for_benchmark("student", str(path), cfg), task, cfg)


@torch.no_grad()
def generation_speed(model, tok, new_tokens: int = 64) -> float:
    ids = tok("Explain why the sky is blue.", return_tensors="pt")["input_ids"]
    model.generate(ids, max_new_tokens=4, do_sample=False)
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student")
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--piqa", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch rows (x 256 tokens) per step")
    parser.add_argument("--mode", choices=["split", "copy"], default="split", help="expert construction")
    parser.add_argument("--top-k", type=int, default=1, help="experts per token")
    parser.add_argument("--out", default="/tmp/bench_router")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    from nexus.models import build_student, load_model, load_tokenizer, save_student
    from nexus.router.config import RouterConfig
    from nexus.router.run import run_router
    from nexus.training.config import TrainConfig
    from nexus.training.run import run_train

    out = Path(args.out)
    student = args.student
    if student is None:
        teacher, resolved = load_model("default")
        n = teacher.config.num_hidden_layers
        keep = sorted({round(i * (n - 1) / (args.keep - 1)) for i in range(args.keep)})
        student = str(
            save_student(
                build_student(teacher, keep, teacher_name="default"),
                out / "student",
                load_tokenizer(resolved),
            )
        )
    common = dict(
        teacher="default",
        student=student,
        data=DATA,
        max_examples=args.examples,
        seq_len=256,
        max_steps=args.steps,
        micro_batch_size=args.batch,
        lr=1e-4,
        eval_every=0,
        eval_max_rows=24,
        save_every=args.steps,
        loss_on="all",
        kd_weight=1.0,
        ce_weight=0.0,
    )
    t0 = time.time()
    dense = run_train(TrainConfig(**common, out=str(out / "dense")), results_dir=out / "results")
    t_dense = time.time() - t0
    t0 = time.time()
    routed = run_router(
        RouterConfig(**common, mode=args.mode, top_k=args.top_k, out=str(out / "routed")),
        results_dir=out / "results",
    )
    t_routed = time.time() - t0
    tok = load_tokenizer(student)
    rows = {}
    for name, path, summary, secs in (
        ("dense", out / "dense/model", dense, t_dense),
        ("routed", out / "routed/model", routed, t_routed),
    ):
        model, _ = load_model(str(path))
        rows[name] = {
            "heldout_kd": summary["eval"]["kd"],
            "top1_agreement": summary["eval"]["top1_agreement"],
            "piqa_acc": piqa_accuracy(path, args.piqa),
            "gen_tok_s": generation_speed(model, tok),
            "train_tokens": summary["tokens_seen"],
            "train_tok_s": summary["tokens_per_second"],
            "phase_seconds": round(secs, 1),
        }
    print(json.dumps(rows, indent=2))
    print(
        "before phase 4 (dense student, routed at init):",
        json.dumps({"dense": routed["dense_eval"], "moe_init": routed["init_eval"]}, indent=2),
    )
    print(
        f"router entropy before {routed['router_entropy_before']:.3f} after {routed['router_entropy_after']:.3f}"
    )
    print((out / "routed/routing.md").read_text())


if __name__ == "__main__":
    main()
