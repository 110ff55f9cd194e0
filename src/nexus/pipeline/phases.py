"""The five phases as the master pipeline runs them.

Each adapter builds the phase's own typed config from its YAML section (pipeline-wide values
such as the teacher and the seed filled in where the section leaves them unset), wires the
hand-off files between phases (``results/profile/student_plan.json`` ->
``results/distill/model`` -> ``results/train/model`` -> ``results/router/model`` -> the
release), and calls the phase's ``run_*`` function with the shared dashboard.
A section with ``enabled: false`` skips that phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus.pipeline.runner import Phase, PipelineContext, phase_config_from_section

PLAN = Path("profile") / "student_plan.json"


def _section(ctx: PipelineContext, key: str) -> dict[str, Any] | None:
    section = dict(getattr(ctx.config, key) or {})
    if section.pop("enabled", True) is False:
        return None
    return section


def _build(ctx: PipelineContext, key: str, cls: type, injected: dict[str, Any]):
    """The phase's typed config from its section, with ``injected`` filling what the section leaves
    unset (None when the section says ``enabled: false``)."""
    section = _section(ctx, key)
    if section is None:
        return None
    return phase_config_from_section(cls, section, injected, ctx.source, key)


def _shared(ctx: PipelineContext, **extra: Any) -> dict[str, Any]:
    return {"teacher": ctx.config.teacher, "seed": ctx.config.seed, **extra}


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


# -- phase 1: profile -------------------------------------------------------------------


def _profile_config(ctx: PipelineContext):
    from nexus.models import num_layers
    from nexus.models.depth import depth_in_layers
    from nexus.profiling.config import ProfileConfig

    injected = {"model": ctx.config.teacher, "seed": ctx.config.seed, "name": "teacher"}
    cfg = _build(ctx, "profile", ProfileConfig, injected)
    # Depths given as shares become layer counts before the phase's config is hashed, so the 2/3
    # default resumes the results of the ``20`` it replaced on the 30-layer default teacher.
    if cfg is not None and isinstance(cfg.plan.keep_layers, float):
        n = num_layers(cfg.model)
        keep = depth_in_layers(cfg.plan.keep_layers, n, "profile.plan.keep_layers")
        cfg = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, keep_layers=keep))
    return cfg


def _profile_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.profiling.phase import run_profile

    return run_profile(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _profile_line(s: dict[str, Any]) -> str:
    critical = "; ".join(
        f"{cap} {[entry[0] if isinstance(entry, list | tuple) else entry for entry in layers]}"
        for cap, layers in (s.get("top_critical") or {}).items()
    )
    keep = s.get("keep_layers")
    return f"profiled in {_fmt(s.get('wall_seconds'), '.0f')} s | critical: {critical} | student keeps {len(keep) if keep else 'n/a'} layers"


# -- phase 2: distill -------------------------------------------------------------------


def _distill_config(ctx: PipelineContext):
    from nexus.distillation.config import DistillConfig

    injected = _shared(ctx)
    if "student" not in (ctx.config.distill or {}) and _section(ctx, "profile") is not None:
        injected["plan"] = str(ctx.results_dir / PLAN)
    cfg = _build(ctx, "distill", DistillConfig, injected)
    if cfg is not None and isinstance(cfg.student_layers, float):
        from nexus.models import num_layers

        cfg = cfg.resolved(num_layers(cfg.teacher))  # as in _profile_config
    return cfg


def _distill_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.distillation import run_distill

    return run_distill(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _eval_line(s: dict[str, Any]) -> str:
    from nexus.trainer.evaluate import heldout_kd

    ev = s.get("eval") or {}
    kd = heldout_kd(ev)
    start = heldout_kd(s.get("eval_start"))
    kd_text = _fmt(kd) if start is None else f"{_fmt(start)} -> {_fmt(kd)}"
    return (
        f"{s.get('step')} steps, {s.get('tokens_seen') or 0:,} tokens | held-out KD {kd_text} nats/token, "
        f"top-1 agreement {_fmt(ev.get('top1_agreement'), '.1%')}, CE {_fmt(ev.get('ce'))}"
    )


# -- phase 3: train ---------------------------------------------------------------------


def _previous_model(ctx: PipelineContext, *keys: str) -> str | None:
    for key in keys:
        if _section(ctx, key) is not None:
            return str(ctx.results_dir / key / "model")
    return None


def _train_config(ctx: PipelineContext):
    from nexus.training.config import TrainConfig

    return _build(ctx, "train", TrainConfig, _shared(ctx, student=_previous_model(ctx, "distill")))


def _train_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.training.run import run_train

    return run_train(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


# -- phase 4: router --------------------------------------------------------------------


def _router_config(ctx: PipelineContext):
    from nexus.router.config import RouterConfig

    return _build(ctx, "router", RouterConfig, _shared(ctx, student=_previous_model(ctx, "train", "distill")))


def _router_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.router.run import run_router

    return run_router(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def router_line(s: dict[str, Any], training_line: Callable[[dict[str, Any]], str]) -> str:
    """A router phase's summary line (text or multimodal): the reason it kept the dense student,
    or the experts, the router entropy before and after, then ``training_line(s)``."""
    if s.get("kept_dense"):
        return str(s["kept_dense"])
    return (
        f"{s.get('experts')} experts (top-{s.get('top_k')}, {s.get('mode')}) | router entropy "
        f"{_fmt(s.get('router_entropy_before'))} -> {_fmt(s.get('router_entropy_after'))} | "
        + training_line(s)
    )


def _router_line(s: dict[str, Any]) -> str:
    return router_line(s, _eval_line)


# -- phase 5: release -------------------------------------------------------------------


def _release_config(ctx: PipelineContext):
    from nexus.release.config import ReleaseConfig
    from nexus.release.run import check_code_sandbox, check_gguf_export

    cfg = _build(ctx, "release", ReleaseConfig, _shared(ctx, release_dir=ctx.config.release_dir))
    if cfg is not None:
        check_code_sandbox(cfg)  # before phase 1: the benchmark's code tasks need a sandbox
        check_gguf_export(cfg, (ctx.config.distill or {}).get("student") or cfg.teacher)
    return cfg


def _release_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.release.run import run_release

    def profile_student(values: dict[str, Any], where: str) -> dict[str, Any]:
        from nexus.config import from_dict
        from nexus.profiling.config import ProfileConfig
        from nexus.profiling.phase import run_profile

        return run_profile(
            from_dict(ProfileConfig, values, where),
            results_dir=ctx.results_dir,
            flags=ctx.flags,
            printer=ctx.printer,
            phase=5,
            phase_name="Release",
        )

    return run_release(cfg, ctx, profiler=profile_student)


def _release_line(s: dict[str, Any]) -> str:
    return (
        f"{s.get('release_dir')} | teacher {_fmt(s.get('teacher_accuracy'), '.2%')}, student "
        f"{_fmt(s.get('student_accuracy'), '.2%')} | alignment {_fmt(s.get('alignment_score'))} | "
        f"{s.get('knowledge_chunks')} knowledge chunks"
    )


PHASES = [
    Phase(1, "profile", "Profile", _profile_config, _profile_run, _profile_line),
    Phase(2, "distill", "Distill", _distill_config, _distill_run, _eval_line),
    Phase(3, "train", "Train", _train_config, _train_run, _eval_line),
    Phase(4, "router", "Router", _router_config, _router_run, _router_line),
    Phase(5, "release", "Release", _release_config, _release_run, _release_line),
]
