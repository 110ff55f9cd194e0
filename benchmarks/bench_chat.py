"""Chat speed: students vs their teacher on the same prompts, and assisted generation.

    .venv/bin/python benchmarks/bench_chat.py --student nexus-release-v1 [--student DIR ...]
        [--teacher default] [--prompts 6] [--max-new-tokens 64] [--repeats 3] [--dtype float32]
        [--experts nexus_sorted,grouped_mm] [--assist --draft-tokens default,3,5,8] [--json OUT]

Part 1, speed (greedy, exactly ``--max-new-tokens`` per prompt, prompts from
nexus.data.builtin.CHAT_PROMPTS in the chat template): per model, time to first token (prefill
plus one step), prefill tokens/s (prompt tokens / time to first token), decode tokens/s (the
other new tokens / the time after the first), each summed over the prompts, median over
``--repeats`` rounds that visit the models in turn (so contention hits them alike), on the wall
clock and on this process's CPU clock (``OMP_NUM_THREADS=1``: CPU time is compute time, which
other processes on a busy machine do not inflate). Peak memory: the peak RSS of a child process
that loads one model and answers the prompts once (CUDA: the allocator peak). ``weights/token``
is the parameter count a decoding step reads (all layers, the output head, only the chosen
experts of a routed model): at batch 1 decoding is bound by reading them, so the teacher's count
over a student's is the decode speed-up to expect. ``--experts`` times a routed student once per
transformers experts implementation (``nexus_sorted`` is what ``load_model`` picks).

Part 2, ``--assist``: ``ChatSession`` with the teacher verifying and the first student drafting
(transformers assisted decoding, chat defaults), per draft length: speed-up over the teacher
alone on the same prompts, draft acceptance, and how many answers equal the teacher's own (all
must: greedy assisted decoding returns the teacher's greedy tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class _Timestamps:
    """A generate() streamer that only notes when the prompt and each new token arrive."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []

    def put(self, value) -> None:
        self.times.append(clocks())

    def end(self) -> None:
        self.times.append(clocks())


def active_parameters(model) -> int:
    """Parameters one batch-1 decoding step reads: everything but the input embedding (one row
    of it is read; tied to the output head it is read whole), and only ``top_k / E`` of each
    routed layer's experts."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight is not embed:
        total -= embed.numel()
    config = model.config
    experts = (
        config.num_local_experts
        if hasattr(config, "num_local_experts")
        else getattr(config, "num_experts", 0)
    )
    if experts:
        top_k = config.num_experts_per_tok
        for name, p in model.named_parameters():
            if ".experts." in name:
                total -= p.numel() * (experts - top_k) // experts
    return total


def prompt_ids(tokenizer, prompts, max_new_tokens) -> list[list[int]]:
    from nexus.inference import ChatOptions, ChatSession

    class _Stub:  # build_input only reads the context window from the model config
        config = type("C", (), {"max_position_embeddings": 8192})()

    session = ChatSession(_Stub(), tokenizer, options=ChatOptions(max_new_tokens=max_new_tokens))
    return [session.build_input(p)[0] for p in prompts]


def time_generation(model, ids: list[int], new_tokens: int) -> dict[str, float]:
    """One greedy generation of exactly ``new_tokens`` tokens; first-token and decode times."""
    import torch

    device = next(model.parameters()).device
    tensor = torch.tensor([ids], device=device)
    stamps = _Timestamps()
    start = clocks()
    with torch.inference_mode():
        model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=model.generation_config.eos_token_id,
            streamer=stamps,
        )
    first, end = stamps.times[1], stamps.times[-1]  # [0] is the prompt
    return {
        "prompt_tokens": len(ids),
        "ttft_wall": first[0] - start[0],
        "ttft_cpu": first[1] - start[1],
        "decode_wall": end[0] - first[0],
        "decode_cpu": end[1] - first[1],
    }


def summarize(rounds: list[list[dict]], new_tokens: int) -> dict[str, float]:
    """Per round: rates summed over the prompts; then the median over rounds."""
    out: dict[str, float] = {}
    for clock in ("wall", "cpu"):
        prefill, decode, ttft = [], [], []
        for prompts in rounds:
            tokens = sum(p["prompt_tokens"] for p in prompts)
            first = sum(p[f"ttft_{clock}"] for p in prompts)
            prefill.append(tokens / first)
            decode.append(len(prompts) * (new_tokens - 1) / sum(p[f"decode_{clock}"] for p in prompts))
            ttft.append(first / len(prompts))
        out[f"prefill_tok_s_{clock}"] = statistics.median(prefill)
        out[f"decode_tok_s_{clock}"] = statistics.median(decode)
        out[f"ttft_s_{clock}"] = statistics.median(ttft)
    return out


def peak_memory(spec: str, args, experts: str | None) -> float | None:
    """Peak RSS (GiB) of a child process that loads ``spec`` and answers the prompts once."""
    command = [sys.executable, __file__, "--memory-of", spec, "--dtype", args.dtype, "--prompts", str(args.prompts),
               "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    if experts:
        command += ["--experts", experts]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  (peak memory of {spec} not measured: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_gib"]


def memory_child(args) -> int:
    import torch

    from nexus.data.builtin import CHAT_PROMPTS
    from nexus.hardware import PeakMemory, pick_device
    from nexus.inference import load_chat_model

    device = pick_device(None)
    with PeakMemory(device) as peak:
        model, tokenizer, _ = load_chat_model(args.memory_of, dtype=args.dtype, device=str(device))
        if args.experts:
            set_experts(model, args.experts.split(",")[0])
        for ids in prompt_ids(tokenizer, CHAT_PROMPTS[: args.prompts], args.max_new_tokens):
            time_generation(model, ids, args.max_new_tokens)
    del torch
    print(json.dumps({"peak_gib": peak.peak_bytes / 2**30}))
    return 0


def set_experts(model, implementation: str) -> bool:
    from nexus.models.moe_inference import IMPLEMENTATION, use_fast_experts

    if not use_fast_experts(model):
        return False  # a dense model
    if implementation != IMPLEMENTATION:
        model.set_experts_implementation(implementation)
    return True


def speed(args, entries, prompts) -> dict[str, dict]:
    """Part 1. ``entries``: (label, spec, model, tokenizer, experts implementation or None)."""
    ids = {label: prompt_ids(tok, prompts, args.max_new_tokens) for label, _, _, tok, _ in entries}
    for label, _, model, _, impl in entries:  # warm-up (first-call allocations, lazy inits)
        if impl:
            set_experts(model, impl)
        time_generation(model, ids[label][0], 4)
    rounds: dict[str, list] = {label: [] for label, *_ in entries}
    for r in range(args.repeats):
        for label, _, model, _, impl in entries:
            if impl:
                set_experts(model, impl)
            rounds[label].append([time_generation(model, i, args.max_new_tokens) for i in ids[label]])
        print(f"  round {r + 1}/{args.repeats} done", flush=True)
    results = {}
    for label, spec, model, _, impl in entries:
        res = summarize(rounds[label], args.max_new_tokens)
        res["weights_per_token_M"] = active_parameters(model) / 1e6
        res["layers"] = model.config.num_hidden_layers
        res["peak_gib"] = None if args.no_memory else peak_memory(spec, args, impl)
        results[label] = res
    return results


def print_speed(results: dict[str, dict], teacher: str) -> None:
    base = results[teacher]
    head = (
        "| model | layers | weights/token | decode tok/s (x teacher) | prefill tok/s (x) | time to first token s (x) "
        "| decode tok/s CPU clock (x) | peak RSS GiB (x) |"
    )
    print("\n" + head + "\n|" + " --- |" * 8)

    def cell(key, label, fmt):
        value, ref = results[label][key], base[key]
        if value is None or ref is None:
            return "-"
        return f"{value:{fmt}} ({value / ref:.2f}x)"

    for label, res in results.items():
        print(
            f"| {label} | {res['layers']} | {res['weights_per_token_M']:.1f}M "
            f"({base['weights_per_token_M'] / res['weights_per_token_M']:.2f}x fewer) "
            f"| {cell('decode_tok_s_wall', label, '.1f')} | {cell('prefill_tok_s_wall', label, '.0f')} "
            f"| {cell('ttft_s_wall', label, '.3f')} | {cell('decode_tok_s_cpu', label, '.1f')} "
            f"| {cell('peak_gib', label, '.2f')} |"
        )


def assisted(args, teacher, tokenizer, draft, draft_tokenizer, prompts) -> list[dict]:
    """Part 2: the teacher alone vs the teacher with ``draft`` drafting, per draft length."""
    from nexus.inference import ChatOptions, ChatSession

    settings = [None if s == "default" else int(s) for s in args.draft_tokens.split(",")]

    def run(draft_tokens, with_draft: bool):
        texts, tokens, wall, cpu, drafted, accepted = [], 0, 0.0, 0.0, 0, 0
        for prompt in prompts:
            session = ChatSession(
                teacher,
                tokenizer,
                assistant=draft if with_draft else None,
                draft_tokenizer=draft_tokenizer if with_draft else None,
                options=ChatOptions(max_new_tokens=args.max_new_tokens, draft_tokens=draft_tokens),
            )
            c0 = time.process_time()
            result = session.respond(prompt)
            cpu += time.process_time() - c0
            texts.append(result.text)
            tokens += result.new_tokens
            wall += result.seconds
            drafted += result.drafted or 0
            accepted += result.accepted or 0
        return {
            "texts": texts,
            "tokens": tokens,
            "wall": wall,
            "cpu": cpu,
            "drafted": drafted,
            "accepted": accepted,
        }

    run(None, True)  # warm-up of the assisted path
    runs: dict[str, list] = {"alone": []} | {str(s): [] for s in settings}
    for r in range(args.repeats):
        runs["alone"].append(run(None, False))
        for s in settings:
            runs[str(s)].append(run(s, True))
        print(f"  assisted round {r + 1}/{args.repeats} done", flush=True)
    alone = runs["alone"]
    rows = []
    for s in settings:
        mine = runs[str(s)]
        first = mine[0]
        rows.append(
            {
                "draft_tokens": "default (up to 20, confidence-cut)" if s is None else s,
                "speedup_wall": statistics.median(
                    a["wall"] / m["wall"] for a, m in zip(alone, mine, strict=True)
                ),
                "speedup_cpu": statistics.median(
                    a["cpu"] / m["cpu"] for a, m in zip(alone, mine, strict=True)
                ),
                "teacher_tok_s": statistics.median(a["tokens"] / a["wall"] for a in alone),
                "assisted_tok_s": statistics.median(m["tokens"] / m["wall"] for m in mine),
                "acceptance": first["accepted"] / max(first["drafted"], 1),
                "accepted": first["accepted"],
                "drafted": first["drafted"],
                "tokens": first["tokens"],
                "identical": sum(a == b for a, b in zip(first["texts"], alone[0]["texts"], strict=True)),
                "prompts": len(prompts),
            }
        )
    return rows


def print_assisted(rows) -> None:
    print(
        "\n| draft tokens per teacher pass | teacher alone tok/s | assisted tok/s | speed-up (wall) "
        "| speed-up (CPU clock) | draft acceptance | answers identical to the teacher's |"
    )
    print("|" + " --- |" * 7)
    for row in rows:
        print(
            f"| {row['draft_tokens']} | {row['teacher_tok_s']:.1f} | {row['assisted_tok_s']:.1f} "
            f"| {row['speedup_wall']:.2f}x | {row['speedup_cpu']:.2f}x "
            f"| {row['acceptance']:.0%} ({row['accepted']}/{row['drafted']}) | {row['identical']}/{row['prompts']} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student", action="append", help="student model spec (repeatable; the first drafts)"
    )
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--experts", help="routed students: time each of these experts implementations")
    parser.add_argument("--assist", action="store_true", help="also measure assisted generation")
    parser.add_argument("--draft-tokens", default="default,3,5,8", help="draft lengths to try with --assist")
    parser.add_argument("--skip-speed", action="store_true", help="only the --assist part")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the peak-memory child
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(args)
    if not args.student:
        parser.error("--student is required")

    import torch

    from nexus.data.builtin import CHAT_PROMPTS
    from nexus.inference import load_chat_model

    prompts = list(CHAT_PROMPTS[: args.prompts])
    print(
        f"threads {torch.get_num_threads()}, dtype {args.dtype}, {len(prompts)} prompts, "
        f"{args.max_new_tokens} new tokens, {args.repeats} rounds"
    )
    teacher, tokenizer, t_resolved = load_chat_model(args.teacher, dtype=args.dtype)
    entries = [("teacher", args.teacher, teacher, tokenizer, None)]
    print(f"teacher: {t_resolved.describe()} ({teacher.config.num_hidden_layers} layers)")
    students = []
    for spec in args.student:
        model, tok, resolved = load_chat_model(spec, dtype=args.dtype)
        students.append((spec, model, tok))
        print(
            f"student: {resolved.describe()} ({model.config.num_hidden_layers} layers, {type(model).__name__})"
        )
        impls = args.experts.split(",") if args.experts and set_experts(model, "nexus_sorted") else [None]
        for impl in impls:
            label = os.path.basename(spec.rstrip("/")) + (f" [{impl}]" if impl else "")
            entries.append((label, spec, model, tok, impl))
    figures: dict = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "repeats": args.repeats}
    if not args.skip_speed:
        figures["speed"] = speed(args, entries, prompts)
        print_speed(figures["speed"], "teacher")
    if args.assist:
        spec, draft, draft_tok = students[0]
        set_experts(draft, "nexus_sorted")
        print(f"\nassisted generation: teacher {args.teacher} verifies, {spec} drafts")
        figures["assisted"] = assisted(args, teacher, tokenizer, draft, draft_tok, prompts)
        print_assisted(figures["assisted"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
