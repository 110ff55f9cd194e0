"""The multimodal pipeline as the master runner runs it (``./run_multimodal_pipeline.sh``).

The same runner as the text pipeline (:func:`nexus.pipeline.runner.run_pipeline`: resume mode,
config-change detection, one lock, ``results/status.json``, pause/stop flags) with its own phase
list. Phase outputs live under ``results/mm_<phase>/`` so a text run and a multimodal run in
one checkout keep their artifacts apart; the dashboard (``results/status.json``) is shared.
Hand-offs: ``mm_profile/student_plan.json`` -> ``mm_distill/model`` -> ``mm_train/model`` ->
``mm_router/model`` (experts in the language tower) -> the release, which ships the routed
student only when its held-out accuracy is at least that of the dense one.
"""

from __future__ import annotations

from typing import Any

from nexus.pipeline.runner import Phase, PipelineContext, phase_config_from_section
from nexus.profiling.plan import PLAN_FILE


def _section(ctx: PipelineContext, key: str) -> dict[str, Any] | None:
    section = dict(getattr(ctx.config, key) or {})
    return None if section.pop("enabled", True) is False else section


def _build(ctx: PipelineContext, key: str, cls: type, injected: dict[str, Any]):
    section = _section(ctx, key)
    if section is None:
        return None
    return phase_config_from_section(cls, section, injected, ctx.source, key)


def _fmt(value: Any, spec: str = ".1%") -> str:
    return "n/a" if value is None else format(value, spec)


def _previous(ctx: PipelineContext, *keys: str) -> str | None:
    for key in keys:
        if _section(ctx, key) is not None:
            return str(ctx.results_dir / f"mm_{key}" / "model")
    return None


# -- phase 1 ----------------------------------------------------------------------------


def _profile_config(ctx: PipelineContext):
    from nexus.multimodal.config import VisionProfileConfig

    return _build(ctx, "profile", VisionProfileConfig, {"model": ctx.config.teacher, "seed": ctx.config.seed})


def _profile_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.multimodal.profile import run_vision_profile

    return run_vision_profile(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _profile_line(s: dict[str, Any]) -> str:
    acc = s.get("teacher_accuracy") or {}
    keep = s.get("keep_layers")
    return (
        f"teacher held-out accuracy {_fmt(acc.get('exact_match'))} exact, {_fmt(acc.get('multiple_choice'))} MC | "
        f"student keeps {len(keep) if keep else 'n/a'} language layers | anchors {s.get('anchor_pairs')}"
    )


# -- phases 2 and 3 ---------------------------------------------------------------------


def _distill_config(ctx: PipelineContext):
    from nexus.multimodal.config import VisionDistillConfig

    injected = {"teacher": ctx.config.teacher, "seed": ctx.config.seed}
    if "student" not in (ctx.config.distill or {}) and _section(ctx, "profile") is not None:
        injected["plan"] = str(ctx.results_dir / "mm_profile" / PLAN_FILE)
    return _build(ctx, "distill", VisionDistillConfig, injected)


def _train_config(ctx: PipelineContext):
    from nexus.multimodal.config import VisionRecoveryConfig

    injected = {"teacher": ctx.config.teacher, "seed": ctx.config.seed, "student": _previous(ctx, "distill")}
    return _build(ctx, "train", VisionRecoveryConfig, injected)


def _training_run(key: str, phase: int):
    def run(cfg, ctx: PipelineContext) -> dict[str, Any]:
        from nexus.multimodal.train import run_vision_training

        return run_vision_training(
            cfg,
            results_dir=ctx.results_dir,
            key=f"mm_{key}",
            phase=phase,
            flags=ctx.flags,
            printer=ctx.printer,
        )

    return run


def _training_line(s: dict[str, Any]) -> str:
    from nexus.trainer.evaluate import heldout_kd

    acc = s.get("accuracy") or {}
    kd = heldout_kd(s.get("eval"))
    return (
        f"{s.get('step')} steps | held-out KD {_fmt(kd, '.3f')} nats/token | student accuracy "
        f"{_fmt(acc.get('exact_match'))} exact, {_fmt(acc.get('multiple_choice'))} MC"
    )


# -- phase 4 ----------------------------------------------------------------------------


def _router_config(ctx: PipelineContext):
    from nexus.multimodal.config import VisionRouterConfig

    injected = {
        "teacher": ctx.config.teacher,
        "seed": ctx.config.seed,
        "student": _previous(ctx, "train", "distill"),
    }
    return _build(ctx, "router", VisionRouterConfig, injected)


def _router_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.multimodal.router import run_vision_router

    return run_vision_router(cfg, results_dir=ctx.results_dir, flags=ctx.flags, printer=ctx.printer)


def _router_line(s: dict[str, Any]) -> str:
    from nexus.pipeline.phases import router_line

    return router_line(s, _training_line)


# -- phase 5 ----------------------------------------------------------------------------


def _release_config(ctx: PipelineContext):
    from nexus.multimodal.config import VisionReleaseConfig

    injected = {
        "teacher": ctx.config.teacher,
        "seed": ctx.config.seed,
        "release_dir": ctx.config.release_dir,
        "student": _previous(ctx, "train", "distill"),
        "routed": _previous(ctx, "router"),
    }
    return _build(ctx, "release", VisionReleaseConfig, injected)


def _release_run(cfg, ctx: PipelineContext) -> dict[str, Any]:
    from nexus.monitor.markers import read_marker
    from nexus.multimodal.release import run_vision_release

    lines = {}
    for phase in PHASES[:-1]:
        marker = read_marker(phase.output_dir(ctx)) or {}
        if marker.get("line"):
            lines[phase.name] = f"{marker['line']} ({marker.get('seconds')} s)"
    return run_vision_release(cfg, results_dir=ctx.results_dir, phase_lines=lines)


def _release_line(s: dict[str, Any]) -> str:
    return (
        f"{s.get('release_dir')} | teacher {_fmt((s.get('teacher_accuracy') or {}).get('exact_match'))}, "
        f"student {_fmt((s.get('student_accuracy') or {}).get('exact_match'))} exact | retention "
        f"{_fmt(s.get('retention_exact_match'))} | student/teacher eval time {s.get('speed_ratio')} | "
        f"shipped {s.get('student_choice')}"
    )


PHASES = [
    Phase(1, "mm_profile", "Profile", _profile_config, _profile_run, _profile_line),
    Phase(2, "mm_distill", "Distill", _distill_config, _training_run("distill", 2), _training_line),
    Phase(3, "mm_train", "Train", _train_config, _training_run("train", 3), _training_line),
    Phase(4, "mm_router", "Router", _router_config, _router_run, _router_line),
    Phase(5, "mm_release", "Release", _release_config, _release_run, _release_line),
]
