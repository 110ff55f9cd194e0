"""`nexus export gguf MODEL OUT.gguf [--type f32|f16|bf16|q8_0]`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a release or model to another format (GGUF)")
    sub = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)

    gguf = sub.add_parser(
        "gguf",
        help="one GGUF file for llama.cpp / Ollama (dense Llama and Qwen2 models)",
        description="Write MODEL (a Nexus release, an HF directory, a checkpoint folder or 'default') "
        "as one GGUF file with its tokenizer and chat template, for llama.cpp and Ollama.",
    )
    gguf.add_argument("model", help="a Nexus release directory or any model spec")
    gguf.add_argument("out", help="the .gguf file to write")
    gguf.add_argument(
        "--type",
        default="f16",
        choices=("f32", "f16", "bf16", "q8_0"),
        help="storage type of the weight matrices (norms stay f32); default f16",
    )
    gguf.add_argument("--name", help="general.name written into the file (default: the model folder's name)")
    gguf.add_argument("--force", action="store_true", help="replace OUT if it exists")
    gguf.add_argument(
        "--check",
        action="store_true",
        help="load the file back through Nexus's GGUF import and print top-1 agreement and KL",
    )
    gguf.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    gguf.set_defaults(func=_gguf)


def _gguf(args: argparse.Namespace) -> int:
    from nexus.models.gguf_export import check_export, export_gguf

    result = export_gguf(
        args.model,
        args.out,
        args.type,
        name=args.name,
        overwrite=args.force,
        trust_remote_code=args.trust_remote_code,
    )
    types = ", ".join(f"{k} {v}" for k, v in sorted(result.tensor_types.items()))
    print(
        f"wrote {result.path} ({result.architecture}, {result.type}, {result.bytes / 2**20:.1f} MiB, "
        f"{result.tensors} tensors: {types})"
    )
    if args.check:
        agreement = check_export(args.model, result.path)
        print(
            f"check: top-1 agreement {agreement.top1:.2%} over {agreement.positions} positions, "
            f"mean KL {agreement.mean_kl:.3g} nats (max {agreement.max_kl:.3g})"
        )
    return 0
