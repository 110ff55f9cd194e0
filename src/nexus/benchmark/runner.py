"""``run_benchmark``: teacher vs student on the same tasks, head to head.

setup (resolve models and tasks, fail fast) -> load both models once -> for each task, each
model scores every item (batched, progress through the monitor) -> fidelity on held-out text
-> paired statistics -> reports (``benchmark_results.json``, ``benchmark_comparison.md``).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from nexus.benchmark import scoring, stats
from nexus.benchmark.config import BenchmarkConfig
from nexus.benchmark.sandbox import humaneval_program, isolation_mode, require_isolation, run_sandboxed
from nexus.benchmark.tasks import Task, TaskItem, load_task, resolve_task_specs
from nexus.errors import NexusError
from nexus.hardware import PeakMemory
from nexus.trainer.evaluate import Fidelity, fidelity_metrics

log = logging.getLogger(__name__)
ROLES = ("teacher", "student")
RESULTS_JSON = "benchmark_results.json"
REPORT_MD = "benchmark_comparison.md"


def newest_release(directory: Path = Path(".")) -> Path:
    """The ``nexus-release-v*`` directory with the highest version number in ``directory``."""
    releases = [p for p in Path(directory).glob("nexus-release-v*") if p.is_dir()]
    if not releases:
        raise NexusError(
            f"no --student given and no nexus-release-v* directory in {Path(directory).resolve()}; "
            "pass --student PATH (a model directory, checkpoint or GGUF file)"
        )

    def version(p: Path) -> tuple:
        return tuple(int(x) for x in re.findall(r"\d+", p.name.removeprefix("nexus-release-v"))) or (0,)

    return max(releases, key=lambda p: (version(p), p.stat().st_mtime))


# -- models -----------------------------------------------------------------------------------


def load_for_benchmark(role: str, spec: str, cfg: BenchmarkConfig) -> scoring.LoadedModel:
    import torch

    from nexus.hardware import pick_device, resolve_precision
    from nexus.models import count_parameters, load_model, load_tokenizer

    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model, resolved = load_model(
        spec, dtype=dtype, device=str(device), trust_remote_code=cfg.trust_remote_code
    )
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.trust_remote_code)
    return scoring.LoadedModel(
        role, spec, model, tokenizer, device, dtype, count_parameters(model), resolved.describe()
    )


def same_tokenizer(a: scoring.LoadedModel, b: scoring.LoadedModel) -> bool:
    """True when both models share a vocabulary (token -> id) and output size."""
    size_a = a.model.get_output_embeddings().weight.shape[0]
    size_b = b.model.get_output_embeddings().weight.shape[0]
    return size_a == size_b and a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


# -- scoring one model on one task ------------------------------------------------------------


def _batches(items: list[TaskItem], size: int) -> list[list[TaskItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def score_batch(
    lm: scoring.LoadedModel, task: Task, batch: list[TaskItem], cfg: BenchmarkConfig
) -> list[dict]:
    """Score one batch of items with one model; one record per item (see the JSON report)."""
    spec = task.spec
    start = time.perf_counter()
    if spec.kind == "choice":
        requests = [
            (lm.format_prompt(it.prompt, spec.chat_template, it.shots), c) for it in batch for c in it.choices
        ]
        lls = scoring.loglikelihoods(lm, requests, max_batch_tokens=cfg.max_batch_tokens)
        seconds = time.perf_counter() - start
        records, k = [], 0
        for it in batch:
            mine = lls[k : k + len(it.choices)]
            k += len(it.choices)
            # acc_norm divides by each choice's own length, without the target delimiter (lm-eval).
            texts = [c.removeprefix(spec.target_delimiter) for c in it.choices]
            pred, pred_norm = scoring.choice_predictions([x.logprob for x in mine], texts)
            records.append(
                {
                    "output": it.choices[pred].strip(),
                    "logprobs": [round(x.logprob, 5) for x in mine],
                    "pred": pred,
                    "pred_norm": pred_norm,
                    "correct": (pred_norm if spec.choice_metric == "acc_norm" else pred) == it.label,
                    "correct_norm": pred_norm == it.label,
                    "latency_s": round(seconds, 4),
                }
            )
        return records
    max_new = cfg.max_new_tokens or spec.max_new_tokens
    prompts = [lm.format_prompt(it.prompt, spec.chat_template, it.shots, it.response_prefix) for it in batch]
    gens = scoring.generate(
        lm, prompts, max_new_tokens=max_new, stop=spec.stop, chat_template=False
    )  # prompts already rendered
    records = []
    for it, gen in zip(batch, gens, strict=True):
        rec: dict[str, Any] = {
            "output": gen.text,
            "tokens": gen.tokens,
            "generation_s": round(gen.seconds, 4),
        }
        if spec.kind == "generate" and spec.metric == "exact":
            rec["extracted"] = scoring.extract_answer(gen.text, spec.answer_regex)
            rec["correct"] = scoring.answers_match(
                rec["extracted"], scoring.extract_answer(it.reference, spec.answer_regex) or it.reference
            )
        elif spec.kind == "generate":
            rec["score"] = round(scoring.rouge_l_f1(gen.text, it.reference or ""), 4)
            rec["correct"] = rec["score"] >= spec.pass_threshold
        else:
            # An answer opened with a code fence is inside it until the model closes it.
            inside = it.response_prefix.count("```") % 2 == 1
            head, body = scoring.code_parts(gen.text, it.code, it.entry_point, inside_fence=inside)
            program = humaneval_program(head, body, it.test, it.entry_point)
            result = run_sandboxed(
                program,
                timeout_s=cfg.code_timeout_s,
                memory_mb=cfg.code_memory_mb,
                allow_unsandboxed=cfg.allow_unsandboxed_code,
            )
            rec.update(correct=result.passed, sandbox=result.status, sandbox_s=result.seconds)
            if not result.passed:
                rec["error"] = (result.stderr.strip().splitlines() or [result.status])[-1][-300:]
        rec["latency_s"] = round(gen.seconds + rec.get("sandbox_s", 0.0), 4)
        records.append(rec)
    return records


def task_accuracy(lm: scoring.LoadedModel, task: Task, cfg: BenchmarkConfig | None = None) -> float:
    """One model's accuracy on one task, by the same rules as the head-to-head run (for
    benchmarks and ablations that score a single model, e.g. PIQA of several students)."""
    cfg = cfg or BenchmarkConfig()
    size = cfg.loglik_items if task.spec.kind == "choice" else cfg.batch_size
    records = [r for batch in _batches(task.items, size) for r in score_batch(lm, task, batch, cfg)]
    if not records:
        raise ValueError(f"task {task.name} has no items")
    return sum(bool(r["correct"]) for r in records) / len(records)


# -- fidelity ---------------------------------------------------------------------------------


def fidelity_texts(tasks: list[Task], n: int) -> list[str]:
    """Held-out texts from the evaluation items themselves (prompt + reference), round-robin over tasks."""
    per_task = []
    for task in tasks:
        texts = []
        for it in task.items:
            if it.choices:
                texts.append(it.prompt + it.choices[it.label])
            elif it.reference:
                texts.append(
                    it.code + it.reference if task.spec.kind == "code" else f"{it.prompt}\n{it.reference}"
                )
        per_task.append(texts)
    out: list[str] = []
    for k in range(max((len(t) for t in per_task), default=0)):
        for texts in per_task:
            if k < len(texts) and len(out) < n:
                out.append(texts[k])
    return out


def fidelity_batches(teacher, student, texts: list[str], cfg: BenchmarkConfig):
    """Batches of ``texts`` through both models: ``(teacher logits or None, student logits, mask,
    input_ids)``, all on the student's device; ``teacher=None`` runs the student alone (the
    retention report's bits per byte of the teacher itself)."""
    import torch

    tok = student.tokenizer
    for start in range(0, len(texts), cfg.batch_size):
        enc = tok(
            texts[start : start + cfg.batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=cfg.fidelity_max_length,
            add_special_tokens=False,
        )
        t = None
        with torch.inference_mode():
            if teacher is not None:
                t = teacher.model(
                    input_ids=enc["input_ids"].to(teacher.device),
                    attention_mask=enc["attention_mask"].to(teacher.device),
                ).logits.to(student.device)
            s = student.model(
                input_ids=enc["input_ids"].to(student.device),
                attention_mask=enc["attention_mask"].to(student.device),
            ).logits
        yield t, s, enc["attention_mask"].to(student.device).bool(), enc["input_ids"].to(student.device)


def measure_fidelity(teacher, student, texts: list[str], cfg: BenchmarkConfig) -> Fidelity:
    total = Fidelity(0.0, 0.0, 0)
    for t, s, mask, _ in fidelity_batches(teacher, student, texts, cfg):
        total = total.merge(fidelity_metrics(t, s, mask))
    return total


# -- statistics -------------------------------------------------------------------------------


def paired_summary(teacher: list[bool], student: list[bool], cfg: BenchmarkConfig) -> dict[str, Any]:
    n = len(teacher)
    t_acc = sum(teacher) / n if n else 0.0
    s_acc = sum(student) / n if n else 0.0
    mc = stats.mcnemar_exact(teacher, student)
    lo, hi = stats.bootstrap_gap_ci(teacher, student, samples=cfg.bootstrap_samples, seed=cfg.seed)
    return {
        "items": n,
        "teacher_accuracy": t_acc,
        "student_accuracy": s_acc,
        "gap": s_acc - t_acc,
        "gap_ci95": [lo, hi],
        "mcnemar_p": mc["p_value"],
        "only_teacher_right": mc["b"],
        "only_student_right": mc["c"],
        "agreement": stats.agreement_rate(teacher, student),
    }


def chance_level(task: Task) -> float:
    """Accuracy of guessing: 1/choices averaged over items (choice tasks), else 0."""
    if task.spec.kind != "choice":
        return 0.0
    return sum(1 / len(it.choices) for it in task.items) / len(task.items)


def overlap_summary(dirty: list[bool], teacher: list[dict], student: list[dict]) -> dict[str, Any]:
    """Items found in the training data, and both models' accuracy on the clean items only."""
    clean = [k for k, d in enumerate(dirty) if not d]

    def acc(records: list[dict]) -> float | None:
        return sum(bool(records[k]["correct"]) for k in clean) / len(clean) if clean else None

    return {
        "dirty_items": len(dirty) - len(clean),
        "clean_items": len(clean),
        "teacher_accuracy_clean": acc(teacher),
        "student_accuracy_clean": acc(student),
    }


def model_summary(
    lm: scoring.LoadedModel, records: list[dict], peak_bytes: int, load_s: float
) -> dict[str, Any]:
    latencies = [r["latency_s"] for r in records]
    # Each generation batch is counted once: items of a batch share its wall time.
    gen_seconds, gen_tokens, seen = 0.0, 0, set()
    for r in records:
        if "tokens" in r:
            gen_tokens += r["tokens"]
            key = (r.get("_task"), r.get("_batch"))
            if key not in seen:
                seen.add(key)
                gen_seconds += r["generation_s"]
    return {
        "spec": lm.spec,
        "loaded_from": lm.described,
        "parameters": lm.parameters,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "load_s": round(load_s, 2),
        "generation_tokens_per_s": round(gen_tokens / gen_seconds, 2) if gen_seconds else None,
        "generated_tokens": gen_tokens,
        "latency_p50_s": stats.percentile(latencies, 50),
        "latency_p95_s": stats.percentile(latencies, 95),
        "peak_memory_mb": round(peak_bytes / 2**20, 1),
        "peak_memory_kind": "cuda max allocated"
        if lm.device.type == "cuda"
        else "process RSS (both models loaded)",
    }


# -- the phase --------------------------------------------------------------------------------


def run_benchmark(
    config: BenchmarkConfig,
    *,
    results_dir: Path = Path("results"),
    flags=None,
    printer=None,
) -> dict[str, Any]:
    """Benchmark the student against the teacher; write the JSON and markdown reports in
    ``results_dir`` and return the summary (teacher/student accuracy, gap, per-task figures)."""
    from nexus.benchmark import report
    from nexus.config import save_resolved, to_dict
    from nexus.models import resolve_model
    from nexus.monitor import Flags, GpuTemperature, KeyboardPauseCallback, StatusWriter, StepAction

    cfg = config
    results_dir = Path(results_dir)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    student_spec = cfg.student or str(newest_release())
    for spec in (cfg.teacher, student_spec):
        resolve_model(spec)  # a missing model fails here, before any loading
    specs = resolve_task_specs(cfg.tasks, Path(cfg.data_dir) if cfg.data_dir else None)
    if any(s.kind == "code" for s in specs):
        require_isolation(cfg.allow_unsandboxed_code)  # no confinement: refused before any loading
    tasks = [load_task(s, limit=cfg.limit, seed=cfg.seed) for s in specs]
    steps_per_model = sum(
        len(_batches(t.items, cfg.loglik_items if t.spec.kind == "choice" else cfg.batch_size)) for t in tasks
    )
    total_steps = 2 * steps_per_model
    save_resolved(cfg, results_dir, name="benchmark_config.yaml")

    gpu = GpuTemperature().start()
    writer = StatusWriter(
        results_dir,
        phase=cfg.phase,
        phase_name=cfg.phase_name,
        total_steps=total_steps,
        throughput_unit="items/s",
        gpu=gpu,
    )
    callback = KeyboardPauseCallback(writer, flags=flags or Flags(Path("flags")), printer=printer)
    started = time.perf_counter()
    try:
        models, load_s = {}, {}
        for role, spec in (("teacher", cfg.teacher), ("student", student_spec)):
            t0 = time.perf_counter()
            models[role] = load_for_benchmark(role, spec, cfg)
            load_s[role] = time.perf_counter() - t0
            log.info(
                "loaded %s: %s (%.1fM parameters)",
                role,
                models[role].described,
                models[role].parameters / 1e6,
            )
        records: dict[str, dict[str, list[dict]]] = {t.name: {} for t in tasks}
        peaks: dict[str, int] = {}
        step, stopped, done_tasks = 0, False, []
        for task in tasks:
            size = cfg.loglik_items if task.spec.kind == "choice" else cfg.batch_size
            for role in ROLES:
                lm = models[role]
                out: list[dict] = []
                with PeakMemory(lm.device) as peak:
                    for b, batch in enumerate(_batches(task.items, size)):
                        for rec in score_batch(lm, task, batch, cfg):
                            rec["_task"], rec["_batch"] = task.name, b
                            out.append(rec)
                        step += 1
                        if callback.step_boundary(step, units=len(batch)) is StepAction.STOP:
                            stopped = True
                            break
                peaks[role] = max(peaks.get(role, 0), peak.peak_bytes)
                records[task.name][role] = out
                if stopped:
                    break
            if stopped:
                break
            done_tasks.append(task)
        if not done_tasks:
            writer.set_status("Stopped")
            raise NexusError(
                "benchmark stopped (flags/stop.flag) before any task finished; no report written"
            )

        fidelity: dict[str, Any]
        if not cfg.fidelity:
            fidelity = {"skipped": "disabled (--no-fidelity)"}
        elif not same_tokenizer(models["teacher"], models["student"]):
            fidelity = {
                "skipped": "teacher and student tokenizers differ; KL and top-1 agreement need the same vocabulary"
            }
            log.warning("tokenizers differ between teacher and student: fidelity metrics skipped")
        else:
            texts = fidelity_texts(done_tasks, cfg.fidelity_items)
            fid = measure_fidelity(models["teacher"], models["student"], texts, cfg)
            fidelity = {
                "kl_teacher_student": fid.kl,
                "top1_agreement": fid.top1_agreement,
                "tokens": fid.tokens,
                "texts": len(texts),
                "source": "benchmark items (prompt + reference answer)",
            }

        lm_eval_results = None
        if cfg.lm_eval_tasks and not stopped:
            from nexus.benchmark.lm_eval_bridge import run_lm_eval

            lm_eval_results = {
                role: run_lm_eval(models[role], cfg.lm_eval_tasks, limit=cfg.limit, batch_size=cfg.batch_size)
                for role in ROLES
            }

        from nexus.benchmark import decontam

        overlap = decontam.overlap_report(
            {t.name: [it.text for it in t.items] for t in done_tasks},
            decontam.training_record(student_spec, cfg.training_data, cfg.training_seed),
        )
        task_results = []
        for task in done_tasks:
            t_rec, s_rec = records[task.name]["teacher"], records[task.name]["student"]
            summary = paired_summary([r["correct"] for r in t_rec], [r["correct"] for r in s_rec], cfg)
            summary.update(
                name=task.name,
                kind=task.spec.kind,
                scoring=task.spec.scoring,
                source=task.spec.source,
                split=task.spec.split,
                chance=chance_level(task),
            )
            summary["teacher_near_chance"] = stats.near_chance(
                [r["correct"] for r in t_rec], summary["chance"]
            )
            dirty = (overlap.get("dirty") or {}).get(task.name)
            summary["overlap"] = None if dirty is None else overlap_summary(dirty, t_rec, s_rec)
            if task.spec.kind == "choice":
                summary["teacher_accuracy_norm"] = sum(r["correct_norm"] for r in t_rec) / len(t_rec)
                summary["student_accuracy_norm"] = sum(r["correct_norm"] for r in s_rec) / len(s_rec)
            items = []
            for k, (it, tr, sr) in enumerate(zip(task.items, t_rec, s_rec, strict=True)):
                items.append({**it.to_dict(), "teacher": _public(tr), "student": _public(sr)})
                if dirty is not None:
                    items[-1]["in_training_data"] = dirty[k]
            task_results.append({"summary": summary, "spec": to_dict(task.spec), "items": items})

        all_t = [r["correct"] for t in done_tasks for r in records[t.name]["teacher"]]
        all_s = [r["correct"] for t in done_tasks for r in records[t.name]["student"]]
        overall = paired_summary(all_t, all_s, cfg)
        all_records = {role: [r for t in done_tasks for r in records[t.name][role]] for role in ROLES}
        results = {
            "overall": overall,
            "tasks": task_results,
            "models": _named(
                {
                    role: model_summary(models[role], all_records[role], peaks.get(role, 0), load_s[role])
                    for role in ROLES
                },
                student_spec,
                cfg.student_name,
            ),
            "fidelity": fidelity,
            "decontamination": {k: v for k, v in overlap.items() if k != "dirty"},
            "lm_eval": lm_eval_results,
            "sandbox_isolation": isolation_mode() if any(t.spec.kind == "code" for t in done_tasks) else None,
            "stopped": stopped,
            "wall_s": round(time.perf_counter() - started, 2),
            "config": to_dict(cfg) | {"student": cfg.student_name or student_spec},
        }
        report.write_reports(results, results_dir)
        writer.set_status("Stopped" if stopped else "Completed")
        return report.summary_of(results, results_dir)
    except BaseException as exc:
        if writer.state["status"] == "Running":
            writer.set_status("Failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        gpu.stop()
        if printer is not None:
            printer.finish()


def _named(models: dict[str, dict], spec: str, name: str | None) -> dict[str, dict]:
    """The student's model summary under ``name`` (the release benchmarks its ``.partial`` build
    but names the release); unchanged without one."""
    if name:
        student = models["student"]
        student["spec"] = name
        student["loaded_from"] = str(student["loaded_from"]).replace(spec, name)
    return models


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}
