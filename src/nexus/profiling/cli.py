"""`nexus profile` (NIWT sensitivity profile, phase 1) and `nexus plan` (student plan from a profile)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from nexus.cli_flags import int_or_float

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(text: str) -> int:
    """``"100M"`` -> 100_000_000, ``"1.5b"`` -> 1_500_000_000, ``"12345"`` -> 12345."""
    from nexus.errors import NexusError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*", text)
    if not match:
        raise NexusError(f"not a parameter count: {text!r} (examples: 90M, 1.5B, 120000000)")
    return int(float(match.group(1)) * _SUFFIX.get(match.group(2).lower(), 1))


def _add_plan_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        f"--{prefix}keep",
        type=int_or_float,
        dest="plan_keep",
        help="teacher layers the student keeps: a count (12) or a share of the teacher's (0.6667)",
    )
    parser.add_argument(
        f"--{prefix}param-budget", dest="plan_budget", help="student parameter budget, e.g. 100M"
    )
    parser.add_argument(
        "--rescore-every",
        type=int,
        help="re-profile the partly pruned teacher after every k removals (0: score once)",
    )
    parser.add_argument(
        "--criterion",
        choices=["sensitivity", "block_influence"],
        help="what ranks layers for removal (default sensitivity: NIWT removal NLL increase)",
    )
    parser.add_argument(
        "--protect-above",
        type=float,
        help="never remove a layer whose removal alone raises some capability's loss by more than this (0.5: +50%%)",
    )
    parser.add_argument("--critical", type=int, help="critical (anchor) layers per capability (default 3)")
    parser.add_argument("--no-protect-first", action="store_true", help="allow removing the first layer")
    parser.add_argument("--no-protect-last", action="store_true", help="allow removing the last layer")


def _plan_overrides(args: argparse.Namespace) -> dict:
    plan = {
        "keep_layers": args.plan_keep,
        "param_budget": parse_count(args.plan_budget) if args.plan_budget else None,
        "rescore_every": args.rescore_every,
        "critical_per_capability": args.critical,
        "criterion": args.criterion,
        "protect_above": args.protect_above,
    }
    if args.no_protect_first:
        plan["protect_first"] = False
    if args.no_protect_last:
        plan["protect_last"] = False
    return {k: v for k, v in plan.items() if v is not None}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="NIWT: perturb each layer, measure which capability it costs (phase 1)",
        description="Perturb each decoder layer of a model and measure the probe NLL of each capability; "
        "writes results/profile/<name>.json, .csv and .png and prints the top critical layers.",
    )
    parser.add_argument(
        "--model", help="model spec: default, a GGUF file, an HF dir, a checkpoint (default: default)"
    )
    parser.add_argument(
        "--probes",
        action="append",
        metavar="[CAP=]PATH",
        help="probe file (JSONL in a native format); CAP=PATH assigns it to a capability; repeatable",
    )
    parser.add_argument(
        "--capabilities",
        help="comma-separated capabilities (default: code,math,chat; built-in probes also for rag)",
    )
    parser.add_argument(
        "--perturb", choices=("removal", "noise", "attention", "mlp"), help="perturbation (default removal)"
    )
    parser.add_argument(
        "--noise-scale", type=float, help="noise std relative to the output RMS (--perturb noise)"
    )
    parser.add_argument(
        "--compare",
        metavar="PROFILE",
        help="another profile JSON: structural alignment + side-by-side heatmap",
    )
    parser.add_argument("--name", help="output name (results/profile/<name>.json)")
    parser.add_argument("--num-probes", type=int, help="probe examples per capability (default 32)")
    parser.add_argument("--probe-offset", type=int, help="skip this many probes of the seeded shuffle")
    parser.add_argument(
        "--max-tokens", type=int, help="longest probe sequence (default 384; longer ones truncated)"
    )
    parser.add_argument("--seed", type=int, help="probe choice and noise seed (default 0)")
    parser.add_argument("--layers", help="comma-separated layer indices to profile (default: all)")
    parser.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default 4096)")
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32", "fp16"), help="default auto (bf16 where fast)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present)")
    parser.add_argument(
        "--threshold", type=float, help="alignment: sensitivity above which a layer costs a capability"
    )
    parser.add_argument("--config", help="YAML config file (section 'profile')")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--results-dir", default="results", help="results folder (default results/)")
    parser.add_argument("--flags", default="flags", help="flags directory (pause.flag / stop.flag)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoint"
    )
    _add_plan_flags(parser, prefix="plan-")
    parser.set_defaults(func=_profile)

    plan = subparsers.add_parser(
        "plan",
        help="student plan (layers to keep, layer map, anchors) from a profile",
        description="Choose which teacher layers a depth-pruned student keeps, from a NIWT profile; "
        "writes student_plan.json (consumed by `nexus models prune` / the distill phase).",
    )
    plan.add_argument("--profile", required=True, help="teacher profile JSON (results/profile/<name>.json)")
    _add_plan_flags(plan)
    plan.add_argument("--model", help="the teacher (needed with --rescore-every; must be the profiled model)")
    plan.add_argument("--out", help="output file (default: student_plan.json next to the profile)")
    plan.set_defaults(func=_plan)


def _profile(args: argparse.Namespace) -> int:
    from nexus.config import parse_overrides
    from nexus.errors import NexusError
    from nexus.phase_cli import load_phase_config, run_single_phase
    from nexus.profiling.config import ProfileConfig
    from nexus.profiling.phase import run_profile

    overrides = {
        "model": args.model,
        "name": args.name,
        "probes": args.probes,
        "capabilities": [c.strip() for c in args.capabilities.split(",") if c.strip()]
        if args.capabilities
        else None,
        "perturbation": args.perturb,
        "noise_scale": args.noise_scale,
        "compare": args.compare,
        "num_probes": args.num_probes,
        "probe_offset": args.probe_offset,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "batch_tokens": args.batch_tokens,
        "precision": args.precision,
        "device": args.device,
        "alignment_threshold": args.threshold,
        "trust_remote_code": args.trust_remote_code or None,
    }
    if args.layers:
        try:
            overrides["layers"] = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise NexusError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    plan = _plan_overrides(args)
    if plan:
        overrides["plan"] = plan
    from nexus.config import deep_merge

    overrides = deep_merge({k: v for k, v in overrides.items() if v is not None}, parse_overrides(args.set))
    config = load_phase_config(args, ProfileConfig, "profile", overrides)
    summary = run_single_phase(run_profile, config, args.results_dir, args.flags)
    if summary.get("stopped"):
        print(
            f"stopped after {summary['steps_done']} of {summary['total_steps']} layer steps (no profile written)"
        )
        return 0
    print(
        f"wrote {summary['profile']} ({summary['wall_seconds']:.1f} s), {summary['csv']}, {summary['heatmap']}"
    )
    for cap, base in summary["baseline"].items():
        acc = f", accuracy {base['accuracy']:.3f}" if base.get("accuracy") is not None else ""
        print(f"baseline {cap}: NLL {base['nll']:.4f}{acc}")
    print(f"top critical layers ({config.perturbation} sensitivity = relative NLL increase):")
    for cap, top in summary["top_critical"].items():
        print(f"  {cap}: " + ", ".join(f"{layer} ({value:+.1%})" for layer, value in top))
    if "alignment" in summary:
        a = summary["alignment"]
        print(f"structural alignment {a['teacher']} -> {a['student']}: overall {a['overall']:.3f}")
        for cap, c in a["capabilities"].items():
            rho = "n/a" if c["spearman"] is None else f"{c['spearman']:.3f}"
            print(f"  {cap}: spearman {rho}, agreement {c['agreement']:.3f} {c['confusion']}")
    if "plan" in summary:
        print(f"wrote {summary['plan']}: keep {summary['keep_layers']}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from nexus.config import from_dict
    from nexus.errors import NexusError
    from nexus.profiling.config import PlanConfig, ProfileConfig
    from nexus.profiling.phase import _load, check_same_model, load_profile, plan_from_profile
    from nexus.profiling.plan import PLAN_FILE, save_plan

    profile = load_profile(args.profile)
    plan_config = from_dict(PlanConfig, _plan_overrides(args), "command-line options")
    if not plan_config.has_target:
        raise NexusError("nexus plan needs a target: --keep N or --param-budget SIZE")
    model = probe_sets = config = None
    if plan_config.rescore_every or args.model:
        config = from_dict(
            ProfileConfig,
            {**profile["config"], "model": args.model or profile["model"]["spec"]},
            f"{args.profile} (config)",
        )
        if plan_config.rescore_every:
            probes = profile.get("probes_file")
            if not probes or not Path(probes).is_file():
                raise NexusError(
                    f"{args.profile}: its probes file {probes} is missing; --rescore-every re-runs those probes"
                )
            config.probes = [probes]
            config.capabilities = list(profile["capabilities"])
        model, tokenizer, info = _load(config)
        check_same_model(profile, info["identity"], config.model)
        if plan_config.rescore_every:
            from nexus.profiling.phase import _probe_sets

            probe_sets = _probe_sets(config, model, tokenizer, info, None)
    plan = plan_from_profile(profile, plan_config, model=model, probe_sets=probe_sets, config=config)
    out = Path(args.out) if args.out else Path(args.profile).parent / PLAN_FILE
    save_plan(plan, out)
    print(
        f"wrote {out}: keep {len(plan['keep_layers'])} of {plan['teacher_num_layers']} layers {plan['keep_layers']}"
    )
    for cap, layers in plan["critical_layers"].items():
        print(f"  critical {cap}: {layers}")
    print(f"  anchor pairs [student, teacher]: {plan['anchor_pairs']}")
    return 0
