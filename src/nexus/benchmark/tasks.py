"""Benchmark tasks: what the models are asked, and the reference each answer is scored against.

(Over 500 lines: the spec, the readers of every source and the evaluation-split selection form
one path from a task name to its items; splitting them would scatter that path.)

A task is a :class:`TaskSpec` (kind, data source, prompt template, scoring options) and its
:class:`TaskItem` list. Three kinds, one scoring rule each, shared by both models:

* ``choice``: multiple choice by log-likelihood of each continuation given the context;
* ``generate``: greedy generation, answer extraction (a regex per task), exact match (or
  ROUGE-L for free-form reference answers);
* ``code``: completion of a HumanEval-format prompt, checked by running its tests in the sandbox.

Sources: the native formats of the public sets in ``../shared/data`` (PIQA, GSM8K, HumanEval,
Code Alpaca, Self-Instruct; read through :mod:`nexus.data.formats`), a generic JSONL file
described by a small YAML (field names + prompt template), the same sets from the Hugging Face
hub (``hf:<name>``, needs ``datasets`` and a network, or local files via ``hf:json``), and the
built-in offline suite (:mod:`nexus.benchmark.builtin_suite`).
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus.config import from_dict, read_yaml
from nexus.errors import NexusError

KINDS = ("choice", "generate", "code")
METRICS = ("exact", "rouge_l", "execution", "loglik")

# Numeric answers, tried in order: "#### 42" (GSM8K), "\boxed{42}" (MATH-style), "the answer is
# 42", then the last number of the output.
NUMBER = r"(-?[\d,]*\.?\d+)"
NUMERIC_ANSWER_REGEX = [
    rf"####\s*\$?{NUMBER}",
    rf"\\boxed\{{\s*\$?{NUMBER}\s*\}}",
    rf"(?i:answer is)\s*:?\s*\$?{NUMBER}",
    NUMBER,
]
# The Codex/HumanEval stop sequences: a new top-level statement ends the function body.
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
MATH_PROMPT = "{prompt}\n\nSolve the problem step by step. End with the final number on its own line, as '#### <number>'."
MATH_FEWSHOT = 4  # worked examples before each math question (one of each built-in problem kind)
# Code for instruct models: the function to complete in a fenced block, and the answer opened
# with a code fence (evalplus-style), so the model writes the function and closes the fence.
CODE_PROMPT = "Complete the following Python function.\n\n```python\n{prompt}```"
CODE_PREFIX = "```python\n"
CODE_STOP = ["\n```", "\nif __name__", "\nprint(", "\nassert "]


@dataclass
class TaskSpec:
    """One benchmark task (also the schema of a task YAML file)."""

    name: str = field(metadata={"help": "task name shown in reports"})
    kind: str = field(metadata={"help": "choice | generate | code"})
    source: str = field(metadata={"help": "data file (JSONL/JSON/.gz), hf:<dataset name>, or builtin:<name>"})
    format: str = field(
        default="native",
        metadata={
            "help": "native: rows in a recognized public format; fields: a generic row read through the field names below"
        },
    )
    prompt: str = field(
        default="{prompt}", metadata={"help": "prompt template over the row's fields ({name})"}
    )
    choices: list[str] | None = field(
        default=None, metadata={"help": "choice templates; default: the list in the choices field"}
    )
    choices_field: str = field(default="choices", metadata={"help": "row field holding the list of choices"})
    label_field: str = field(
        default="label", metadata={"help": "row field with the right choice (index or text)"}
    )
    answer_field: str = field(default="answer", metadata={"help": "row field with the reference answer"})
    test_field: str = field(default="test", metadata={"help": "row field with the test code (code tasks)"})
    entry_point_field: str = field(
        default="entry_point", metadata={"help": "row field naming the function to test"}
    )
    target_delimiter: str = field(default=" ", metadata={"help": "put between context and each choice"})
    choice_metric: str = field(
        default="acc",
        metadata={
            "help": "choice tasks: what decides an item's correctness, acc (log-likelihood) or "
            "acc_norm (per character, for choices of different lengths)"
        },
    )
    answer_regex: list[str] = field(
        default_factory=list,
        metadata={"help": "regexes tried in order on the output; the last match's group 1 is the answer"},
    )
    metric: str = field(default="exact", metadata={"help": "generate tasks: exact | rouge_l"})
    pass_threshold: float = field(
        default=0.5, metadata={"help": "rouge_l: F1 at or above this counts as correct"}
    )
    stop: list[str] = field(
        default_factory=list, metadata={"help": "generation stops at any of these strings"}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "generation length cap"})
    chat_template: bool = field(
        default=True, metadata={"help": "render prompts through each model's chat template"}
    )
    response_prefix: str = field(
        default="",
        metadata={"help": "template the model's answer starts with (e.g. an opened code fence)"},
    )
    fewshot: int = field(
        default=0,
        metadata={
            "help": "worked examples shown before each question (chat turns, or text for base models), "
            "from rows outside the scored split"
        },
    )
    split: str = field(
        default="eval",
        metadata={
            "help": "eval: only evaluation-split rows (nexus.data.splits; training never reads them); "
            "train: only rows training reads; all: every row. A task that scores rows of a training "
            "split gets '[train-split]' appended to its name"
        },
    )
    hf_config: str | None = field(default=None, metadata={"help": "hf: dataset configuration name"})
    hf_split: str = field(default="test", metadata={"help": "hf: split"})
    hf_data_files: str | None = field(default=None, metadata={"help": "hf: local data files (with hf:json)"})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.format not in ("native", "fields"):
            raise ValueError(f"format must be native or fields, not {self.format!r}")
        if self.choice_metric not in ("acc", "acc_norm"):
            raise ValueError(f"choice_metric must be acc or acc_norm, not {self.choice_metric!r}")
        if self.split not in ("eval", "train", "all"):
            raise ValueError(f"split must be eval, train or all, not {self.split!r}")
        if self.metric not in ("exact", "rouge_l"):
            raise ValueError(f"metric must be exact or rouge_l, not {self.metric!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.fewshot < 0:
            raise ValueError("fewshot must be at least 0")
        for pattern in self.answer_regex:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"answer_regex {pattern!r} is not a valid regex: {exc}") from None

    @property
    def scoring(self) -> str:
        choice = "loglik" if self.choice_metric == "acc" else "loglik/char"
        return {"choice": choice, "code": "execution"}.get(self.kind, self.metric)


@dataclass
class TaskItem:
    """One question, identical for both models (before each model's chat template)."""

    id: str  # where it came from ("file:line", "builtin-code:3")
    prompt: str  # the context / prompt text
    question: str  # short human-readable form for reports
    choices: list[str] = field(default_factory=list)  # continuations, delimiter included
    label: int = -1  # index of the right choice
    reference: str | None = None  # reference answer (generate) / canonical solution (code)
    test: str = ""
    entry_point: str = ""
    text: str = ""  # the row's own question + reference, for the training-overlap check
    code: str = ""  # code tasks: the code the answer continues (HumanEval prompt)
    response_prefix: str = ""  # what the model's answer is opened with
    shots: list[list[str]] = field(default_factory=list)  # few-shot [question, answer] pairs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Task:
    spec: TaskSpec
    items: list[TaskItem]

    @property
    def name(self) -> str:
        return self.spec.name


# -- presets for the public sets in ../shared/data -----------------------------------------


def shared_presets(data_dir: Path) -> dict[str, TaskSpec]:
    """The public sets, as lm-evaluation-harness / the original papers score them."""
    return {
        "piqa": TaskSpec(
            "piqa",
            "choice",
            str(data_dir / "piqa" / "valid.jsonl"),
            prompt="Question: {prompt}\nAnswer:",  # lm-eval's piqa doc_to_text
            chat_template=False,
        ),
        "gsm8k": TaskSpec(
            "gsm8k",
            "generate",
            str(data_dir / "gsm8k" / "train.jsonl"),
            prompt=MATH_PROMPT,
            answer_regex=NUMERIC_ANSWER_REGEX,
            max_new_tokens=256,
            fewshot=MATH_FEWSHOT,
        ),
        "humaneval": TaskSpec(
            "humaneval",
            "code",
            str(data_dir / "humaneval" / "HumanEval.jsonl.gz"),
            prompt=CODE_PROMPT,
            response_prefix=CODE_PREFIX,
            stop=CODE_STOP,
            max_new_tokens=320,
        ),
        "code_alpaca": TaskSpec(
            "code_alpaca",
            "generate",
            str(data_dir / "code_alpaca" / "code_alpaca_2k.json"),
            metric="rouge_l",
            max_new_tokens=192,
        ),
        "self_instruct": TaskSpec(
            "self_instruct",
            "generate",
            str(data_dir / "chat_prompts" / "user_oriented_instructions.jsonl"),
            metric="rouge_l",
            max_new_tokens=192,
        ),
    }


BUILTIN_PRESETS = {
    "builtin-code": TaskSpec(
        "builtin-code",
        "code",
        "builtin:code",
        prompt=CODE_PROMPT,
        response_prefix=CODE_PREFIX,
        stop=CODE_STOP,
        max_new_tokens=160,
    ),
    "builtin-math": TaskSpec(
        "builtin-math",
        "generate",
        "builtin:math",
        prompt=MATH_PROMPT,
        answer_regex=NUMERIC_ANSWER_REGEX,
        max_new_tokens=160,
        fewshot=MATH_FEWSHOT,
    ),
    # Through the chat template (the answer is the assistant's turn, no delimiter), and scored by
    # acc_norm: the two answers differ in length, which the raw sum of log-probabilities punishes.
    "builtin-chat": TaskSpec(
        "builtin-chat",
        "choice",
        "builtin:chat",
        prompt="Question: {prompt}\nAnswer:",
        target_delimiter="",
        choice_metric="acc_norm",
    ),
}
HUB_PRESETS = {
    "hf-piqa": dict(source="hf:ybisk/piqa", hf_split="validation"),
    "hf-gsm8k": dict(source="hf:openai/gsm8k", hf_config="main", hf_split="test", fewshot=0),
    "hf-humaneval": dict(source="hf:openai/openai_humaneval", hf_split="test"),
}
BUILTIN_SUITE = ("builtin-code", "builtin-math", "builtin-chat")
ALIASES = {"builtin": BUILTIN_SUITE, "shared": ("piqa", "gsm8k", "humaneval")}


def default_data_dir() -> Path:
    """``../shared/data`` from the working directory, else from the repository root."""
    here = Path("../shared/data")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def resolve_task_specs(names: list[str], data_dir: Path | None = None) -> list[TaskSpec]:
    """Task names (presets, ``builtin``, ``shared``) and YAML files -> specs, in order, no duplicates."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    presets = {**shared_presets(data_dir), **BUILTIN_PRESETS}
    for hub_name, options in HUB_PRESETS.items():
        base = presets[hub_name.removeprefix("hf-")]
        presets[hub_name] = dataclasses.replace(base, name=hub_name, **options)
    specs: list[TaskSpec] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name in ALIASES:
            specs += [presets[n] for n in ALIASES[name]]
        elif name in presets:
            specs.append(presets[name])
        elif name.endswith((".yaml", ".yml")):
            specs += load_task_yaml(name)
        else:
            known = ", ".join(sorted([*presets, *ALIASES]))
            raise NexusError(f"unknown task '{name}' (known: {known}; or give a task .yaml file)")
    unique: dict[str, TaskSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    if not unique:
        raise NexusError("no tasks selected")
    return list(unique.values())


def load_task_yaml(path: str | Path) -> list[TaskSpec]:
    """A task YAML holds one task mapping, or ``tasks:`` with a list of them; relative data paths
    are relative to the YAML file."""
    path = Path(path)
    raw = read_yaml(path)
    entries = raw.get("tasks", [raw])
    if not isinstance(entries, list):
        raise NexusError(f"{path}: 'tasks' must be a list of task mappings")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{path} (task {i + 1})" if "tasks" in raw else str(path)
        if not isinstance(entry, dict):
            raise NexusError(f"{where}: a task must be a mapping")
        for key in ("name", "kind", "source"):
            if key not in entry:
                raise NexusError(f"{where}: missing field '{key}'")
        entry = dict(entry)
        entry.setdefault("format", "fields")
        source = str(entry["source"])
        if not source.startswith(("hf:", "builtin:")) and not Path(source).is_absolute():
            entry["source"] = str(path.parent / source)
        specs.append(from_dict(TaskSpec, entry, where))
    return specs


# -- rows -> items ---------------------------------------------------------------------------


class _Fields(dict):
    """Format mapping that records which field a template needed and the row lacked."""

    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _render(template: str, row: dict[str, Any], where: str, task: str) -> str:
    for name in _template_fields(template):
        if name not in row or row[name] is None:
            raise NexusError(f"{where}: task '{task}' needs field '{name}', which this row lacks")
    try:
        return template.format_map(_Fields({k: "" if v is None else v for k, v in row.items()}))
    except (KeyError, IndexError, ValueError) as exc:
        raise NexusError(f"{where}: task '{task}': cannot fill the template {template!r}: {exc}") from None


def _need(row: dict[str, Any], key: str, where: str, task: str) -> Any:
    if key not in row or row[key] is None or row[key] == "":
        raise NexusError(f"{where}: task '{task}' needs field '{key}', which this row lacks")
    return row[key]


def _native_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A public-format row, normalized through nexus.data, as template fields."""
    from nexus.data.formats import example_from_row

    ex = example_from_row(row, where)
    fields = {**row, "prompt": ex.prompt, "response": ex.response}
    if ex.kind == "choice":
        fields.update(choices=ex.choices, label=ex.label)
    elif ex.kind == "code":
        fields.update(test=ex.extra["test"], entry_point=ex.extra["entry_point"], answer=ex.response)
    elif ex.answer is not None:
        fields["answer"] = ex.answer
    else:
        fields["answer"] = ex.response
    return fields


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def item_from_row(spec: TaskSpec, row: dict[str, Any], where: str) -> TaskItem:
    """Build one item; a missing field is a NexusError naming file:line and the field."""
    fields = _native_row(row, where) if spec.format == "native" else row
    prompt = _render(spec.prompt, fields, where, spec.name)
    item = TaskItem(id=where, prompt=prompt, question=_short(prompt))
    item.response_prefix = _render(spec.response_prefix, fields, where, spec.name)
    own_text = str(fields["prompt"]) if spec.format == "native" else prompt
    if spec.kind == "choice":
        if spec.choices:
            options = [_render(t, fields, where, spec.name) for t in spec.choices]
        else:
            options = _need(fields, spec.choices_field, where, spec.name)
            if not isinstance(options, list) or len(options) < 2:
                raise NexusError(
                    f"{where}: task '{spec.name}': field '{spec.choices_field}' must list 2+ choices"
                )
            options = [str(o) for o in options]
        label = _need(fields, spec.label_field, where, spec.name)
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in options:
                raise NexusError(f"{where}: task '{spec.name}': label {label!r} is not one of the choices")
            label = options.index(label)
        label = int(label)
        if not 0 <= label < len(options):
            raise NexusError(
                f"{where}: task '{spec.name}': label {label} out of range for {len(options)} choices"
            )
        item.choices = [spec.target_delimiter + o for o in options]
        item.label = label
        item.text = f"{own_text}\n{options[label]}"
    elif spec.kind == "generate":
        item.reference = str(_need(fields, spec.answer_field, where, spec.name))
        item.text = f"{own_text}\n{fields.get('response') or item.reference}"
    else:  # code
        item.test = str(_need(fields, spec.test_field, where, spec.name))
        item.entry_point = str(_need(fields, spec.entry_point_field, where, spec.name))
        item.reference = str(fields.get("answer") or fields.get("canonical_solution") or "") or None
        item.code = str(fields.get("prompt", "")) if spec.format == "native" else prompt
        item.text = item.code + (item.reference or "")
        item.question = _short(item.code.strip().splitlines()[0] if item.code.strip() else item.entry_point)
        for line in item.code.splitlines():
            if line.startswith("def ") and item.entry_point in line:
                item.question = _short(line)
    return item


def _builtin_rows(name: str) -> list[tuple[str, dict[str, Any]]]:
    from nexus.benchmark import builtin_suite
    from nexus.data.builtin import arithmetic_word_problems

    if name == "code":
        return [(f"builtin-code:{i}", dict(p)) for i, p in enumerate(builtin_suite.CODE_PROBLEMS)]
    if name == "math":
        problems = arithmetic_word_problems(100, seed=builtin_suite.MATH_SEED)
        return [
            (f"builtin-math:{i}", {"question": e.prompt, "answer": e.response})
            for i, e in enumerate(problems)
        ]
    if name == "chat":
        rng = random.Random(builtin_suite.MATH_SEED)
        rows = []
        for i, (goal, right, wrong) in enumerate(builtin_suite.CHAT_QUESTIONS):
            label = rng.randint(0, 1)
            sols = [right, wrong] if label == 0 else [wrong, right]
            rows.append(
                (f"builtin-chat:{i}", {"goal": goal, "sol1": sols[0], "sol2": sols[1], "label": label})
            )
        return rows
    raise NexusError(f"unknown built-in task source 'builtin:{name}' (known: code, math, chat)")


def _hub_rows(spec: TaskSpec) -> list[tuple[str, dict[str, Any]]]:
    from nexus.data.hub import load_hf_dataset

    data = load_hf_dataset(
        spec.source.removeprefix("hf:"),
        split=spec.hf_split,
        config=spec.hf_config,
        data_files=spec.hf_data_files,
        subject=f"task '{spec.name}' ({spec.source})",
    )
    return [(f"{spec.source}[{i}]", dict(row)) for i, row in enumerate(data)]


def _rows(spec: TaskSpec) -> list[tuple[str, dict[str, Any]]]:
    if spec.source.startswith("builtin:"):
        return _builtin_rows(spec.source.removeprefix("builtin:"))
    if spec.source.startswith("hf:"):
        return _hub_rows(spec)
    from nexus.data.formats import read_rows

    path = Path(spec.source)
    if not path.is_file():
        raise NexusError(f"task '{spec.name}': data file not found: {path}")
    return [(f"{path}:{line}", row) for line, row in read_rows(path)]


def select_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """``limit`` of ``range(n)`` drawn with a fixed seed, in file order (all when no limit)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


TRAIN_SPLIT_MARK = "[train-split]"


def split_rows(
    spec: TaskSpec, rows: list[tuple[str, dict[str, Any]]]
) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The rows ``spec.split`` selects (:mod:`nexus.data.splits` decides each row's side), and
    whether any of them is a row that training reads. Built-in tasks have no split (their items
    are generated apart from the training corpus); a hub split other than ``train`` is the hub's
    own evaluation split and is taken whole."""
    from nexus.data.splits import row_split

    if spec.source.startswith("builtin:"):
        return rows, False
    if spec.source.startswith("hf:") and spec.hf_split != "train":
        return rows, spec.split == "train"
    kept, trained = [], spec.split == "train"
    for where, row in rows:
        side = row_split(row)
        if (spec.split == "eval" and side == "train") or (spec.split == "train" and side == "eval"):
            continue
        kept.append((where, row))
        trained = trained or side == "train"
    return kept, trained


def fewshot_pairs(
    spec: TaskSpec, rows: list[tuple[str, dict[str, Any]]], scored: set[str]
) -> list[list[str]]:
    """``spec.fewshot`` worked ``[question, answer]`` pairs, never rows the task scores: the
    built-in math generator's own few-shot seed, else the first rows of the source outside the
    scored ones (for ``split: eval``, training-split rows, as lm-eval draws GSM8K's shots from
    its train split). GSM8K's ``<<calculator>>`` annotations are removed from the answers."""
    if not spec.fewshot:
        return []
    if spec.source == "builtin:math":
        from nexus.benchmark.builtin_suite import FEWSHOT_SEED
        from nexus.data.builtin import arithmetic_word_problems

        rows = [
            (f"builtin-math-shot:{i}", {"question": e.prompt, "answer": e.response})
            for i, e in enumerate(arithmetic_word_problems(spec.fewshot, seed=FEWSHOT_SEED))
        ]
    pairs = []
    for where, row in rows:
        if where in scored:
            continue
        item = item_from_row(spec, row, where)
        fields = _native_row(row, where) if spec.format == "native" else row
        answer = str(fields.get("response") or item.reference or "")
        pairs.append([item.prompt, re.sub(r"<<[^<>]*>>", "", answer)])
        if len(pairs) == spec.fewshot:
            break
    if len(pairs) < spec.fewshot:
        raise NexusError(
            f"task '{spec.name}': not enough rows outside the scored ones for {spec.fewshot} shots"
        )
    return pairs


def load_task(spec: TaskSpec, *, limit: int | None = None, seed: int = 1234) -> Task:
    """Read the task's rows, keep those of ``spec.split``, draw ``limit`` of them with ``seed``,
    and build the items (with their few-shot examples). A task that includes training-split rows
    is renamed ``<name>[train-split]``."""
    all_rows = _rows(spec)
    rows, trained = split_rows(spec, all_rows)
    if trained and not spec.name.endswith(TRAIN_SPLIT_MARK):
        spec = dataclasses.replace(spec, name=spec.name + TRAIN_SPLIT_MARK)
    chosen = [rows[i] for i in select_indices(len(rows), limit, seed)]
    items = [item_from_row(spec, row, where) for where, row in chosen]
    shots = fewshot_pairs(spec, all_rows, {where for where, _ in rows})
    for item in items:
        item.shots = shots
    if not items:
        raise NexusError(
            f"task '{spec.name}' has no items (source {spec.source}, split {spec.split}, limit {limit})"
        )
    return Task(spec, items)
