"""Phase 1's probes are never rows the benchmark scores (issue 14, item 3): choosing the
student's layers on evaluation rows would be tuning on the test set."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nexus.benchmark.builtin_suite import MATH_SEED
from nexus.benchmark.tasks import _builtin_rows
from nexus.data.builtin import arithmetic_word_problems
from nexus.data.formats import example_from_row
from nexus.data.splits import split_of
from nexus.errors import NexusError
from nexus.profiling.probes import collect_examples


def _norm(text: str) -> str:
    return " ".join(text.split())


def _texts(chosen) -> list[str]:
    return [_norm(f"{e.prompt}\n{e.response}\n{e.text}") for examples in chosen.values() for e in examples]


def _answered(examples):
    return [dataclasses.replace(e, response="An answer.") for e in examples]


@pytest.mark.parametrize("seed", [0, MATH_SEED])  # the default seed, and the benchmark's own
def test_builtin_probes_contain_no_builtin_benchmark_question(seed):
    chosen, sources = collect_examples(
        ["code", "math", "chat"], [], num_probes=24, seed=seed, builtin_chat=_answered
    )
    assert all(len(v) == 24 for v in chosen.values()), {k: len(v) for k, v in chosen.items()}
    questions = [
        _norm(row[key])
        for name, key in (("code", "prompt"), ("math", "question"), ("chat", "goal"))
        for _, row in _builtin_rows(name)
    ]
    leaks = [q for q in questions for t in _texts(chosen) if q in t]
    assert not leaks, leaks[:3]
    if seed == 0:  # nothing to skip at the default seed: the same probes (and plan) as before
        assert [e.prompt for e in chosen["math"]] == [e.prompt for e in arithmetic_word_problems(24, 0)]


def test_probe_files_give_training_split_rows_only(tmp_path):
    rows = [{"question": f"Ann has {a} pens and buys {a + 3} more. How many now?", "answer": f"#### {2 * a + 3}"}
            for a in range(60)]  # fmt: skip
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = [_norm(r["question"]) for r in rows if split_of(example_from_row(r, "r")) == "eval"]
    assert evaluation  # the file holds both sides
    chosen, _ = collect_examples(["math"], [f"math={path}"], num_probes=60, seed=0)
    assert len(chosen["math"]) == len(rows) - len(evaluation)
    assert all(split_of(e) == "train" for e in chosen["math"])
    leaks = [q for q in evaluation for t in _texts(chosen) if q in t]
    assert not leaks, leaks[:3]


@pytest.mark.parametrize(
    "row",
    [
        {"goal": "To open a jar", "sol1": "twist the lid", "sol2": "paint the lid", "label": 0},
        {"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "test": "", "entry_point": "f"},
    ],
    ids=["piqa", "humaneval"],
)  # fmt: skip
def test_probe_files_of_evaluation_only_sets_are_refused(tmp_path, row):
    path = tmp_path / "probes.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(NexusError, match="evaluation-only") as err:
        collect_examples(["x"], [f"x={path}"], num_probes=4, seed=0)
    assert "\n" not in str(err.value)


def test_builtin_rag_probes_are_answerable_grounded_rows_with_disjoint_offsets(tiny_tokenizer):
    from nexus.data.grounded import ABSTAIN_ANSWER
    from nexus.profiling.probes import encode_probes

    first, sources = collect_examples(["rag"], [], num_probes=8, seed=0)
    second, _ = collect_examples(["rag"], [], num_probes=8, seed=0, offset=8)
    assert sources == {"rag": ["builtin:rag"]} and len(first["rag"]) == len(second["rag"]) == 8
    assert not {e.prompt for e in first["rag"]} & {e.prompt for e in second["rag"]}
    for example in first["rag"]:
        assert example.kind == "chat" and example.response != ABSTAIN_ANSWER
        assert example.response.rstrip(".").split()[-1] in example.prompt  # the context holds the answer
    probes = encode_probes("rag", first["rag"], tiny_tokenizer, max_tokens=96)
    assert all(sum(s.score_mask) > 0 for s in probes.sequences)  # a cut keeps the scored answer
