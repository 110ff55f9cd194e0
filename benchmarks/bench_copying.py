"""Can a model copy what its context holds? The induction probe behind docs/pipeline.md's
"Why the student does not read its context".

    .venv/bin/python benchmarks/bench_copying.py --model default --model results/distill/model
    .venv/bin/python benchmarks/bench_copying.py --model default --scan-layers   # each layer removed

Two figures per model: *repeat*, the top-1 accuracy of its predictions on the second copy of a run
of 24 random tokens (30 runs, ids 1000-20000 or the vocabulary's, the first token of the repeat left out: it cannot be
known); *name*, the top-1 accuracy and NLL per token of a made-up shop name asked back from a
one-line document (40 names). ``--scan-layers`` also scores the first model with each of its
decoder layers removed in turn (``nexus.models.pruning.build_student``), which ranks the layers
copying depends on. ``--keep`` scores the first model pruned to a keep-list (repeatable, e.g. a
plan's ``keep_layers``).
"""

from __future__ import annotations

import argparse
import json
import random

import torch

SYLLABLES = ["yar", "quo", "bai", "nim", "hol", "jeb", "wen", "ock", "ul", "gra", "thu", "sel", "vop", "ri", "zan", "dek"]  # fmt: skip
GOODS = ["bread and tea", "rope and nails", "lamp oil", "wool socks", "maps and compasses", "honey cakes"]
RUNS, RUN_LENGTH, NAMES = 30, 24, 40


def repeat_batch(bos: int, vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low, high = min(1000, vocab_size // 4), min(20000, vocab_size)
    runs = [torch.randint(low, high, (RUN_LENGTH,), generator=g) for _ in range(RUNS)]
    return torch.stack([torch.cat([torch.tensor([bos]), r, r]) for r in runs])


@torch.no_grad()
def repeat_accuracy(model, batch: torch.Tensor) -> float:
    start = 1 + RUN_LENGTH  # predictions at the repeat's first token .. second-to-last
    pred = model(batch).logits[:, start:-1].argmax(-1)
    return (pred == batch[:, start + 1 :]).float().mean().item()


@torch.no_grad()
def name_copy(model, tok) -> tuple[float, float]:
    rng = random.Random(99)
    hits = total = 0
    nll = 0.0
    for _ in range(NAMES):
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize() + " " + rng.choice(["Provisions", "Stores", "Goods"])  # fmt: skip
        goods = rng.choice(GOODS)
        prefix = f"Document: {name} is a small shop on a quiet lane. It sells {goods}.\nQuestion: Which shop sells {goods}?\nAnswer:"  # fmt: skip
        p = tok(prefix, add_special_tokens=False).input_ids
        a = tok(" " + name, add_special_tokens=False).input_ids
        logp = torch.log_softmax(model(torch.tensor([p + a])).logits[0, len(p) - 1 : -1].float(), -1)
        target = torch.tensor(a)
        hits += (logp.argmax(-1) == target).sum().item()
        total += len(a)
        nll -= logp.gather(1, target[:, None]).sum().item()
    return hits / total, nll / total


def main() -> None:
    from nexus.models import load_model, load_tokenizer
    from nexus.models.pruning import build_student, decoder_layers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model spec (repeatable)")
    parser.add_argument("--scan-layers", action="store_true", help="also the first model minus each layer")
    parser.add_argument(
        "--keep", action="append", default=[], help="JSON keep-list for the first model (repeatable)"
    )
    args = parser.parse_args()

    print("| model | repeat top-1 | name top-1 | name NLL / token |")
    print("| --- | ---: | ---: | ---: |")
    first = None
    for spec in args.model:
        model, resolved = load_model(spec)
        tok = load_tokenizer(resolved)
        bos = tok.bos_token_id if tok.bos_token_id is not None else 0
        batch = repeat_batch(bos, model.config.vocab_size)
        hit, nll = name_copy(model, tok)
        print(
            f"| {spec} | {100 * repeat_accuracy(model, batch):.1f}% | {100 * hit:.1f}% | {nll:.3f} |",
            flush=True,
        )
        first = first or (spec, model, batch)
    spec, model, batch = first
    n = len(decoder_layers(model))
    for keep in args.keep:
        layers = json.loads(keep)
        print(
            f"| {spec} keeping {layers} | {100 * repeat_accuracy(build_student(model, layers), batch):.1f}% | | |"
        )
    if args.scan_layers:
        for layer in range(n):
            pruned = build_student(model, [i for i in range(n) if i != layer])
            print(
                f"| {spec} without layer {layer} | {100 * repeat_accuracy(pruned, batch):.1f}% | | |",
                flush=True,
            )


if __name__ == "__main__":
    main()
