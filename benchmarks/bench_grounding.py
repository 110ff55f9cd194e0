"""Does a model answer from the documents its chat retrieves, and decline when they lack the answer?

    .venv/bin/python benchmarks/bench_grounding.py --model nexus-release-v1 --model default
    .venv/bin/python benchmarks/bench_grounding.py --set dev --model default --layout all   # layouts

Sets (``--set``, default ``heldout``; the documents and questions are in
``nexus.benchmark.grounding_sets``): ``heldout`` is three made-up domains that no training row and
no tuning decision touched (villages, libraries, shops: 30 answerable who / when / how-many /
what / how-to questions and 18 whose answer the documents leave out); ``dev`` is profiles of the
training generator's kinds under another seed (the set the context layout was chosen on);
``dev-domains`` is three more made-up domains built as the held-out ones are (mountain huts,
bakeries, observatories: own names, questions that mostly paraphrase the documents), the second
set the chat's rules are tuned on; ``nexus-docs`` is ten how-to questions about Nexus answered by ``docs/`` and the README (the
model's own index for a release, else an index of them).

Each question is its own conversation through the chat's own path (``ChatSession``): retrieval
from an index of the set's documents built with ``nexus index build``'s defaults, the chosen
context layout, greedy decoding with the chat's default repetition penalty. An answerable question
is *right* when the answer contains one of its key strings (the name, year, number, thing or
command) and does not decline; an *absent* one is right when the answer declines
(``nexus.data.grounded.is_abstention``). *Context had it* counts answerable questions whose key
was in the retrieved chunks, so retrieval misses are not blamed on the model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from nexus.benchmark import grounding
from nexus.benchmark.grounding import has_key, score, summarize  # noqa: F401  (this script's API)
from nexus.benchmark.grounding_sets import TYPES, EvalSet, Question, dev_domains_set, dev_set, heldout_set
from nexus.inference.session import PENALTY_SCOPES, ChatOptions

ROOT = Path(__file__).resolve().parents[1]

# (question, key facts: an answer that names any of them is grounded)
NEXUS_QUESTIONS = [
    ("How do I pause training?", ["pause.flag", "nexus pause"]),
    ("How do I resume a paused run?", ["nexus resume", "rm flags/pause.flag"]),
    ("How do I stop the pipeline cleanly?", ["stop.flag", "nexus stop", "ctrl-c"]),
    ("How do I start the pipeline over?", ["--fresh"]),
    ("How do I run only part of the pipeline?", ["--only", "--from"]),
    ("How do I watch the status line from another terminal?", ["status --watch"]),
    ("How do I get a quick first look at the pipeline?", ["--preset quick"]),
    ("How do I run the test suite?", ["make test"]),
    ("How do I build a knowledge index?", ["nexus index build"]),
    ("Which file holds the pipeline's status?", ["status.json"]),
]


def nexus_docs_set() -> EvalSet:
    questions = [Question("nexus", "how-to", q, tuple(keys)) for q, keys in NEXUS_QUESTIONS]
    return EvalSet("nexus-docs", [], questions)


def build_set_index(eval_set: EvalSet, where: Path) -> Path:
    return grounding.build_set_index(eval_set, where, fallback_docs=[ROOT / "docs", ROOT / "README.md"])


KNOBS = (
    "layout",
    "k",
    "focus",
    "hybrid",
    "match_names",
    "check_answer_kind",
    "peer_check",
    "let_model_decline",
    "decline_below",
    "cad",
    "copy_bias",
    "lookup_tokens",
    "penalty_scope",
)  # ChatOptions fields varied here
HEADS = {
    "hybrid": "retrieval",
    "match_names": "chunks",
    "check_answer_kind": "kind check",
    "peer_check": "peer check",
    "let_model_decline": "model declines",
    "decline_below": "decline below",
    "copy_bias": "copy",
    "lookup_tokens": "lookup",
    "penalty_scope": "penalty on",
}


def shown(name: str, value) -> str:
    if name == "hybrid":
        return "hybrid" if value else "dense"
    if name == "match_names":
        return "named" if value else "all"
    if name in ("check_answer_kind", "peer_check"):
        return "on" if value else "off"
    if name == "let_model_decline":
        return "free" if value else "checked"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(rows: list[tuple[str, dict, dict]]) -> str:
    def pct(x):
        return "-" if x != x else f"{100 * x:.0f}%"

    knobs = " | ".join(HEADS.get(n, n) for n in KNOBS)
    head = (
        f"| model | {knobs} | answerable right | "
        + " | ".join(TYPES)
        + " | declined: absent | declined: answerable | context had it | answer tok/s |"
    )
    lines = [head, "| --- | --- |" + " ---: |" * (len(KNOBS) - 2) + " --- |" + " ---: |" * (len(TYPES) + 5)]
    for spec, knob, s in rows:
        cells = [pct(s["per_type"][t]) for t in TYPES]
        values = " | ".join(shown(n, knob[n]) for n in KNOBS)
        lines.append(
            f"| {spec} | {values} | {pct(s['answerable'])} (n={s['n_answerable']}) | "
            + " | ".join(cells)
            + f" | {pct(s['declined_absent'])} (n={s['n_absent']}) | {pct(s['declined_answerable'])} | {pct(s['in_context'])} | {s['tok_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from nexus.knowledge.tower import DEFAULT_LAYOUT, LAYOUTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model spec (repeatable)")
    parser.add_argument("--set", default="heldout", choices=["heldout", "dev", "dev-domains", "nexus-docs"])
    parser.add_argument("--layout", action="append", help=f"context layout (repeatable, or 'all'): {', '.join(LAYOUTS)}; default {DEFAULT_LAYOUT.name}")  # fmt: skip
    parser.add_argument("--k", type=int, action="append", help="chunks to retrieve (repeatable; default 4)")
    parser.add_argument("--focus", type=int, action="append",
                        help=f"sentences of the chunks kept, 0 = whole chunks (repeatable; default {ChatOptions.focus})")  # fmt: skip
    parser.add_argument("--retrieval", action="append", choices=["dense", "hybrid"],
                        help="rank by cosine similarity, or fused with BM25 (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--chunks", action="append", choices=["named", "all"],
                        help="keep the chunks that name what the question names, or all (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--kind-check", action="append", choices=["on", "off"],
                        help="decline how-many / what-year questions no kept sentence holds a number / year for (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--peer-check", action="append", choices=["on", "off"],
                        help="decline when an unnamed retrieved document says more about what is asked (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--model-declines", action="append", choices=["checked", "free"],
                        help="ban a decline as the answer's opening where the kept sentences hold a word of what is asked (checked), or not (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument(
        "--knowledge", help="nexus-docs: knowledge index directory (default: the model's own, else docs/)"
    )
    parser.add_argument(
        "--cad",
        type=float,
        action="append",
        help="context-aware decoding strength (repeatable; default 0 = off)",
    )
    parser.add_argument("--decline-below", type=float, action="append",
                        help="with focus, decline when no kept sentence is this similar (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--copy-bias", type=float, action="append",
                        help=f"copy bias, logits added to the context's continuation of the answer (repeatable; default {ChatOptions.copy_bias:g}, 0 = off)")  # fmt: skip
    parser.add_argument("--lookup", type=int, action="append",
                        help="prompt-lookup draft tokens per pass (repeatable; default 0 = off)")  # fmt: skip
    parser.add_argument("--penalty-scope", action="append", choices=PENALTY_SCOPES,
                        help="tokens the repetition penalty counts (repeatable; default: the chat's)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--limit", type=int, help="only the first N questions (a quick look)")
    parser.add_argument(
        "--lower-case", action="store_true", help="ask the questions typed in lower case, names too"
    )
    parser.add_argument("--json", help="write every answer and the summaries here")
    parser.add_argument("--quiet", action="store_true", help="only the summary table")
    args = parser.parse_args()
    layouts = list(LAYOUTS) if args.layout == ["all"] else (args.layout or [DEFAULT_LAYOUT.name])
    for name in layouts:
        if name not in LAYOUTS:
            parser.error(f"unknown layout {name!r}: {', '.join(LAYOUTS)}")
    axes = {
        "layout": layouts,
        "k": args.k or [ChatOptions.k],
        "focus": args.focus or [ChatOptions.focus],
        "hybrid": [r == "hybrid" for r in args.retrieval] if args.retrieval else [ChatOptions.hybrid],
        "match_names": [c == "named" for c in args.chunks] if args.chunks else [ChatOptions.match_names],
        "check_answer_kind": [c == "on" for c in args.kind_check]
        if args.kind_check
        else [ChatOptions.check_answer_kind],
        "peer_check": [c == "on" for c in args.peer_check] if args.peer_check else [ChatOptions.peer_check],
        "let_model_decline": [c == "free" for c in args.model_declines]
        if args.model_declines
        else [ChatOptions.let_model_decline],
        "decline_below": args.decline_below or [ChatOptions.decline_below],
        "cad": args.cad or [ChatOptions.cad],
        "copy_bias": args.copy_bias or [ChatOptions.copy_bias],
        "lookup_tokens": args.lookup or [ChatOptions.lookup_tokens],
        "penalty_scope": args.penalty_scope or [ChatOptions.penalty_scope],
    }
    sets = {
        "heldout": heldout_set,
        "dev": dev_set,
        "dev-domains": dev_domains_set,
        "nexus-docs": nexus_docs_set,
    }
    eval_set = sets[args.set]()
    if args.limit:
        eval_set = EvalSet(eval_set.name, eval_set.documents, eval_set.questions[: args.limit])
    if args.lower_case:
        import dataclasses

        lowered = [dataclasses.replace(q, text=q.text.lower()) for q in eval_set.questions]
        eval_set = EvalSet(eval_set.name, eval_set.documents, lowered)

    from nexus.inference.loading import knowledge_dir_for, load_chat_model
    from nexus.knowledge.tower import KnowledgeTower

    rows, dump = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shared_index = None
        for spec in args.model:
            model, tokenizer, resolved = load_chat_model(spec, dtype="float32", device="cpu")
            index = args.knowledge if args.set == "nexus-docs" else None
            if args.set == "nexus-docs" and index is None:
                index = knowledge_dir_for(resolved)
            if index is None:
                if shared_index is None:
                    shared_index = build_set_index(eval_set, Path(tmp))
                index = shared_index
            tower = KnowledgeTower.load(index)
            for values in itertools.product(*(axes[n] for n in KNOBS)):
                knob = dict(zip(KNOBS, values, strict=True))
                label = " / ".join(f"{HEADS.get(n, n)}={shown(n, v)}" for n, v in knob.items())
                print(f"{spec} / {label} on {eval_set.name}:", flush=True)
                t0 = time.perf_counter()
                options = ChatOptions(max_new_tokens=args.max_new_tokens, **knob)
                records = grounding.evaluate(
                    model, tokenizer, tower, eval_set.questions, options, not args.quiet
                )
                summary = summarize(records)
                rows.append((spec, knob, summary))
                dump.append({"model": spec, **knob, "set": eval_set.name, "summary": summary,
                             "seconds": time.perf_counter() - t0, "records": records})  # fmt: skip
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
