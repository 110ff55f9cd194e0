"""Phase 4, the expert router: ``run_router`` (convert -> report -> train -> report -> save).

1. **Convert** the dense student into a transformers MoE model (:mod:`nexus.router.experts`):
   with ``partition=coactivation`` one forward pass over ``calibration_tokens`` tokens of the
   domain data gives each layer's MLP activations; neurons are grouped by co-activation,
   groups are matched to domains (expert i <- domain i: code, math, chat) and routers are fitted
   in closed form to pick the expert whose output matters most (``router_init=fit``).
2. **Report** routing on held-out rows: per-layer entropy and a domains x experts load table.
3. **Train** with :class:`nexus.trainer.loop.Trainer` (KD from the teacher) plus :class:`RouterObjective`
   (load balancing, z-loss, beta_entropy, optional domain warm-up); phase 4 in the monitor,
   checkpoints / resume / pause / stop as in phase 2.
4. **Report** again, write ``routing.md``, ``routing.json``, ``routing_load.png`` and the routing
   scalars to ``metrics.jsonl`` / TensorBoard; warn on collapse. ``OUT/model`` is a plain
   ``MixtralForCausalLM`` / ``Qwen2MoeForCausalLM`` directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from nexus.config import save_resolved
from nexus.data.formats import DOMAINS
from nexus.errors import NexusError
from nexus.monitor import Flags, StatusPrinter, warn_line
from nexus.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MOE_MODEL_TYPES = ("mixtral", "qwen2_moe")


def parse_expert_layers(spec: str, num_layers: int, *, plan: str | None, student_config=None) -> list[int]:
    """``all`` | ``critical`` (the plan's critical layers that the student kept) | ``0,3,5``."""
    if spec == "all":
        return list(range(num_layers))
    if spec == "critical":
        if not plan:
            raise NexusError("expert_layers=critical needs --plan (the student_plan.json of `nexus profile`)")
        path = Path(plan)
        if not path.is_file():
            raise NexusError(f"plan not found: {plan}")
        info = json.loads(path.read_text())
        critical = info.get("critical_layers")
        if critical is None:
            raise NexusError(f"{plan} has no 'critical_layers' entry")
        if isinstance(critical, dict):  # per capability
            critical = sorted({i for v in critical.values() for i in v})
        keep = info.get("keep_layers") or (getattr(student_config, "nexus_student", None) or {}).get(
            "keep_layers"
        )
        layers = sorted(keep.index(t) for t in critical if keep and t in keep) if keep else sorted(critical)
        if not layers:
            raise NexusError(f"none of the critical layers {critical} of {plan} is in the student")
        return layers
    layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise NexusError(
            f"expert layer {bad[0] if bad else spec} is out of range: the student has layers 0..{num_layers - 1}"
        )
    return layers


def expert_names(num_experts: int, named_by_domain: bool, domains: tuple[str, ...] = DOMAINS) -> list[str]:
    if named_by_domain and num_experts >= len(domains):
        return [*domains, *[f"expert{i}" for i in range(len(domains), num_experts)]]
    return [f"expert{i}" for i in range(num_experts)]


def calibration_batches(rows, tokenizer, total_tokens: int, batch_size: int = 4):
    """Rows taken round-robin over ``rows.domains`` until ``total_tokens`` real tokens (dicts for
    :func:`~nexus.router.experts.collect_mlp_activations`)."""
    from nexus.router.objective import token_mask

    per_domain = [np.nonzero(np.asarray(rows.domain_ids) == d)[0] for d in range(len(rows.domains))]
    order = [int(r) for group in zip(*[p for p in per_domain if len(p)], strict=False) for r in group]
    pad = tokenizer.pad_token_id
    taken = 0
    for start in range(0, len(order), batch_size):
        batch = rows.batch(order[start : start + batch_size])
        mask = token_mask(batch, pad).view_as(batch["input_ids"])
        yield {**batch, "token_mask": mask}
        taken += int(mask.sum())
        if taken >= total_tokens:
            return


def convert_student(dense, cfg, data, tokenizer, layers: list[int]):
    """The MoE model of ``dense`` per ``cfg`` (see the module docstring, step 1); ``data.train``:
    rows with domain ids (``data.train.domains``: text domains, or image capabilities)."""
    from torch import nn

    from nexus.models import decoder_layers
    from nexus.router.experts import (
        align_groups_to_domains,
        coactivation_partition,
        collect_mlp_activations,
        dense_to_moe,
        even_partition,
        expert_output_norms,
        fit_router,
    )

    domains = tuple(data.train.domains)
    split = cfg.mode == "split"
    use_data = split and (cfg.partition == "coactivation" or cfg.router_init == "fit")
    groups, routers = None, None
    if not split and cfg.router_init == "fit" and cfg.num_experts >= len(domains):
        # copy: every expert is the dense MLP, so any routing gives the dense output at step 0;
        # the routers start as domain classifiers (expert i <- domain i) so each copy then
        # trains on its own domain and the load follows the domain mix instead of one direction
        x, _, doms = collect_mlp_activations(
            dense,
            calibration_batches(data.train, tokenizer, cfg.calibration_tokens),
            layers,
            max_tokens=cfg.calibration_tokens,
        )
        known = doms >= 0
        if known.any():
            target = nn.functional.one_hot(doms[known], cfg.num_experts).float()
            routers = {i: fit_router(x[i][known], target) for i in layers}
            log.info(
                "domain routers for %d copied layers from %d calibration tokens",
                len(layers),
                int(known.sum()),
            )
    if use_data:
        x, acts, doms = collect_mlp_activations(
            dense,
            calibration_batches(data.train, tokenizer, cfg.calibration_tokens),
            layers,
            max_tokens=cfg.calibration_tokens,
        )
        blocks = decoder_layers(dense)
        inter = dense.config.get_text_config().intermediate_size
        groups, routers = {}, {}
        for i in layers:
            if cfg.partition == "coactivation":
                g = coactivation_partition(acts[i], cfg.num_experts, seed=cfg.seed)
                g = align_groups_to_domains(g, acts[i], doms, len(domains))
            else:
                g = even_partition(inter, cfg.num_experts)
            groups[i] = [t.sort().values for t in g]
            if cfg.router_init == "fit":
                # the MLP output is E x (scaled) expert outputs, so the per-token ranking is the same
                routers[i] = fit_router(x[i], expert_output_norms(blocks[i].mlp, acts[i], groups[i]))
        log.info("grouped MLP neurons of %d layers on %d calibration tokens", len(layers), len(doms))
    named = (split and cfg.partition == "coactivation") or (not split and routers is not None)
    named = named or cfg.domain_warmup_steps > 0
    return dense_to_moe(
        dense,
        num_experts=cfg.num_experts,
        top_k=cfg.top_k,
        mode=cfg.mode,
        expert_layers=layers,
        groups=groups if split and cfg.partition == "coactivation" else None,
        router_weights=routers,
        architecture=cfg.moe_architecture,
        expert_names=expert_names(cfg.num_experts, named, domains),
        seed=cfg.seed,
    )


def _report(model, rows, layout, pad_id, device, max_rows):
    from nexus.router.objective import routing_report

    return routing_report(
        model,
        rows,
        layers=layout.expert_layers,
        num_experts=layout.num_experts,
        top_k=layout.top_k,
        domains=rows.domains,
        pad_id=pad_id,
        max_rows=max_rows,
        device=device,
    )


def _write_reports(out: Path, before, after, layout, threshold: float) -> dict[str, Any]:
    names = layout.expert_names
    text = [
        "# Routing report",
        "",
        f"{layout.num_experts} experts ({layout.mode}, {layout.partition}), top-{layout.top_k}, "
        f"layers {layout.expert_layers}. Cells: share of each domain's top-k slots per expert, all layers pooled.",
        "",
        "## Before training",
        "",
        before.load_table(names),
        "",
        before.entropy_table(),
        "",
        "## After training",
        "",
        after.load_table(names),
        "",
        after.entropy_table(),
        "",
    ]
    warnings = after.collapse_warnings(threshold)
    if warnings:
        text += ["## Collapse warnings", "", *[f"- {w}" for w in warnings], ""]
    atomic_write_text(out / "routing.md", "\n".join(text))
    report = {"before": before.summary(threshold), "after": after.summary(threshold), "expert_names": names}
    atomic_write_json(out / "routing.json", report)
    before.save_png(out / "routing_load_before.png", names, "before training: expert load per domain")
    after.save_png(out / "routing_load.png", names, "after training: expert load per domain")
    return report


def keep_dense(
    config, out: Path, results_dir: Path, reason: str, printer: StatusPrinter | None
) -> dict[str, Any]:
    """A family with no MoE counterpart: no ``OUT/model``, the reason in ``OUT/summary.json`` (the
    release then ships the dense student of phase 3 or 2 and says why)."""
    from nexus.trainer.finetune import default_student

    warn_line(printer, reason, log, "[Phase 4: Router] ")
    summary = {
        "kept_dense": reason,
        "student": default_student(config.student, results_dir),
        "model_dir": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    save_resolved(config, out)
    return summary


def upcycle(config, dense, data, tokenizer, teacher_source, device):
    """``(routed model, dense evaluation)``: ``dense`` converted per ``config`` (an already routed
    model is returned as it is, with no dense evaluation). ``data``: ``.train`` (calibration rows
    with domain ids) and ``.heldout`` (None: the training rows are evaluated)."""
    from nexus.router.experts import check_moe_request
    from nexus.trainer.evaluate import evaluate_fidelity

    text_config = dense.config.get_text_config()
    if text_config.model_type in MOE_MODEL_TYPES:
        return dense, None  # already routed (e.g. a phase-4 output fine-tuned again)
    # Also on resume: the conversion is seeded, so the dense evaluation and the "before training"
    # reports describe the same start as an uninterrupted run (the release compares against
    # dense_eval); the loop then loads the checkpoint's trained weights into this model.
    check_moe_request(text_config.model_type, config.num_experts, config.top_k, config.moe_architecture)
    layers = parse_expert_layers(
        config.expert_layers,
        text_config.num_hidden_layers,
        plan=config.plan,
        student_config=dense.config,
    )
    eval_rows = data.heldout if data.heldout is not None else data.train
    dense_eval = evaluate_fidelity(
        dense, teacher_source, eval_rows, max_rows=config.eval_max_rows, device=device
    )
    return convert_student(dense, config, data, tokenizer, layers), dense_eval


def train_router(
    config,
    model,
    *,
    data,
    saver,
    teacher_source,
    out: Path,
    results_dir: Path,
    device,
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
    save_dtype=None,
) -> dict[str, Any]:
    """Steps 2-4 of the module docstring on the routed ``model`` (text, or a vision-language model
    with a routed language tower): reports, the loop with :class:`RouterObjective`, ``OUT/model``
    (with ``saver``, the tokenizer or processor, beside it), the routing reports and files. Returns
    the trainer's summary with the routing figures; the caller writes ``summary.json``."""
    from nexus.router.experts import moe_layout
    from nexus.router.objective import RouterLogits, RouterObjective, routing_metrics
    from nexus.trainer.evaluate import evaluate_fidelity
    from nexus.trainer.finetune import default_student
    from nexus.trainer.loop import Trainer
    from nexus.trainer.metrics import MetricsLog

    layout = moe_layout(model)
    if layout is None:
        raise NexusError(
            f"{default_student(config.student, results_dir)} is an MoE model without Nexus expert metadata"
        )
    pad_id = getattr(saver, "tokenizer", saver).pad_token_id
    eval_rows = data.heldout if data.heldout is not None else data.train
    model.to(device)
    before = _report(model, eval_rows, layout, pad_id, device, config.eval_max_rows)
    init_eval = evaluate_fidelity(
        model, teacher_source, eval_rows, max_rows=config.eval_max_rows, device=device
    )
    log.info("routing before training:\n%s", before.load_table(layout.expert_names))

    n_domains = len(data.train.domains)
    domain_to_expert = {d: d for d in range(n_domains)} if layout.num_experts >= n_domains else {}
    capture = RouterLogits(model, layout.expert_layers)
    objective = RouterObjective(
        config, capture=capture, top_k=layout.top_k, pad_id=pad_id, domain_to_expert=domain_to_expert
    )
    model.train()
    trainer = Trainer.for_phase(
        config,
        model,
        tokenizer=saver,
        train=data.train,
        heldout=data.heldout,
        teacher=teacher_source,
        out_dir=out,
        extra_loss=objective,
        results_dir=results_dir,
        flags=flags,
        printer=printer,
        phase=4,
        save_dtype=save_dtype,
        start_eval=init_eval,
    )
    try:
        summary = trainer.fit()
    finally:
        capture.remove()
    after = _report(model, eval_rows, layout, pad_id, device, config.eval_max_rows)
    report = _write_reports(out, before, after, layout, config.collapse_threshold)
    metrics_log = MetricsLog(out, trainer.dist.is_main)  # one routing line per run, not one per process
    metrics_log.write(trainer.step, routing_metrics(after), prefix="routing")
    metrics_log.close()
    for warning in report["after"]["collapse_warnings"]:
        warn_line(printer, warning, log)
    summary.update(
        {
            "experts": layout.num_experts,
            "top_k": layout.top_k,
            "mode": layout.mode,
            "expert_layers": layout.expert_layers,
            "expert_names": layout.expert_names,
            "init_eval": init_eval,
            "router_entropy_before": report["before"]["mean_entropy"],
            "router_entropy_after": report["after"]["mean_entropy"],
            "load_per_domain_before": report["before"]["load_per_domain"],
            "load_per_domain_after": report["after"]["load_per_domain"],
            "collapse_warnings": report["after"]["collapse_warnings"],
            "is_main": trainer.dist.is_main,
        }
    )
    return summary


def run_router(
    config,
    *,
    results_dir: Path = Path("results"),
    flags: Flags | None = None,
    printer: StatusPrinter | None = None,
) -> dict[str, Any]:
    """Phase 4: experts + router from the student, trained with KD and router losses."""
    from nexus.hardware import pick_device
    from nexus.models import student_save_dtype
    from nexus.router.experts import dense_only_reason
    from nexus.trainer.finetune import build_data, load_pair
    from nexus.trainer.teacher import LiveTeacherSource

    results_dir = Path(results_dir)
    out = Path(config.out) if config.out else results_dir / "router"
    device = pick_device(config.device)
    teacher, dense, tokenizer = load_pair(config, results_dir)
    kept_dense = dense_only_reason(dense.config.model_type)
    if kept_dense and dense.config.model_type not in MOE_MODEL_TYPES:
        return keep_dense(config, out, results_dir, kept_dense, printer)
    data = build_data(config, tokenizer, teacher)
    teacher_source = LiveTeacherSource(teacher)
    model, dense_eval = upcycle(config, dense, data, tokenizer, teacher_source, device)
    del dense
    summary = train_router(
        config,
        model,
        data=data,
        saver=tokenizer,
        teacher_source=teacher_source,
        out=out,
        results_dir=results_dir,
        device=device,
        flags=flags,
        printer=printer,
        save_dtype=student_save_dtype(config.teacher),
    )
    summary.update({"dense_eval": dense_eval, "domain_weights": data.weights})
    if summary.pop("is_main"):
        atomic_write_json(out / "summary.json", summary)
        save_resolved(config, out)
    return summary
