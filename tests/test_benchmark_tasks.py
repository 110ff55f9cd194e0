import json
import sys
import types

import pytest

from nexus.benchmark.tasks import load_task, load_task_yaml, resolve_task_specs, select_indices
from nexus.errors import NexusError


def test_shared_data_adapters(shared_data):
    specs = resolve_task_specs(["shared", "code_alpaca", "self_instruct"], shared_data)
    tasks = {s.name: load_task(s, limit=5, seed=0) for s in specs}
    piqa = tasks["piqa"].items[0]
    assert piqa.prompt.startswith("Question: ") and piqa.prompt.endswith("\nAnswer:")
    assert len(piqa.choices) == 2 and all(c.startswith(" ") for c in piqa.choices) and piqa.label in (0, 1)
    assert tasks["gsm8k"].items[0].reference.lstrip("-").replace(".", "").isdigit()
    he = tasks["humaneval"].items[0]
    assert he.entry_point in he.prompt and "def check" in he.test
    assert all(len(t.items) == 5 for t in tasks.values())
    assert tasks["code_alpaca"].spec.metric == "rouge_l" and tasks["code_alpaca"].items[0].reference


def test_limit_draw_is_fixed_by_seed():
    assert select_indices(100, 5, 7) == select_indices(100, 5, 7)
    assert select_indices(100, 5, 7) != select_indices(100, 5, 8)
    assert select_indices(3, 10, 0) == [0, 1, 2]


def test_builtin_suite_covers_code_math_chat():
    specs = resolve_task_specs(["builtin"])
    kinds = {s.name: s.kind for s in specs}
    assert kinds == {"builtin-code": "code", "builtin-math": "generate", "builtin-chat": "choice"}
    for spec in specs:
        task = load_task(spec, limit=3)
        assert len(task.items) == 3


def test_builtin_code_problems_pass_with_reference_solutions():
    from nexus.benchmark.builtin_suite import CODE_PROBLEMS
    from nexus.benchmark.sandbox import humaneval_program, run_sandboxed

    solutions = {
        "add": "    return a + b\n",
        "factorial": "    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n",
    }
    for problem in CODE_PROBLEMS:
        if problem["entry_point"] in solutions:
            program = humaneval_program(
                problem["prompt"], solutions[problem["entry_point"]], problem["test"], problem["entry_point"]
            )
            assert run_sandboxed(program).passed


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_generic_yaml_task(tmp_path):
    _write(
        tmp_path / "capitals.jsonl",
        [{"country": "France", "city": "Paris"}, {"country": "Japan", "city": "Tokyo"}],
    )
    (tmp_path / "task.yaml").write_text(
        "name: capitals\nkind: generate\nsource: capitals.jsonl\nprompt: 'Capital of {country}?'\n"
        "answer_field: city\nanswer_regex: ['([A-Z][a-z]+)']\nmax_new_tokens: 8\n"
    )
    [spec] = resolve_task_specs([str(tmp_path / "task.yaml")])
    task = load_task(spec)
    assert [i.prompt for i in task.items] == ["Capital of France?", "Capital of Japan?"]
    assert task.items[1].reference == "Tokyo" and task.items[1].id.endswith("capitals.jsonl:2")


def test_generic_choice_task_with_text_label(tmp_path):
    _write(tmp_path / "mc.jsonl", [{"q": "Sky?", "options": ["blue", "green"], "gold": "blue"}])
    (tmp_path / "mc.yaml").write_text(
        "tasks:\n  - {name: mc, kind: choice, source: mc.jsonl, prompt: 'Q: {q}\\nA:', choices_field: options, label_field: gold}\n"
    )
    task = load_task(load_task_yaml(tmp_path / "mc.yaml")[0])
    assert task.items[0].choices == [" blue", " green"] and task.items[0].label == 0


def test_missing_field_names_file_line_and_field(tmp_path):
    _write(tmp_path / "bad.jsonl", [{"country": "France", "city": "Paris"}, {"country": "Spain"}])
    (tmp_path / "t.yaml").write_text(
        "name: caps\nkind: generate\nsource: bad.jsonl\nprompt: '{country}'\nanswer_field: city\n"
    )
    with pytest.raises(NexusError, match=r"bad\.jsonl:2: task 'caps' needs field 'city'"):
        load_task(load_task_yaml(tmp_path / "t.yaml")[0])
    (tmp_path / "t2.yaml").write_text(
        "name: caps\nkind: generate\nsource: bad.jsonl\nprompt: '{nation}'\nanswer_field: city\n"
    )
    with pytest.raises(NexusError, match=r"bad\.jsonl:1: task 'caps' needs field 'nation'"):
        load_task(load_task_yaml(tmp_path / "t2.yaml")[0])
    (tmp_path / "t3.yaml").write_text("name: caps\nsource: bad.jsonl\n")
    with pytest.raises(NexusError, match="missing field 'kind'"):
        load_task_yaml(tmp_path / "t3.yaml")
    (tmp_path / "t4.yaml").write_text("name: caps\nkind: essay\nsource: bad.jsonl\n")
    with pytest.raises(NexusError, match="kind must be one of"):
        load_task_yaml(tmp_path / "t4.yaml")


def test_unknown_and_empty_tasks(tmp_path):
    with pytest.raises(NexusError, match="unknown task 'nope'"):
        resolve_task_specs(["nope"])
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "e.yaml").write_text("name: empty\nkind: generate\nsource: empty.jsonl\n")
    with pytest.raises(NexusError, match="task 'empty' has no items"):
        load_task(load_task_yaml(tmp_path / "e.yaml")[0], limit=5)


def test_hub_loading_goes_through_datasets_with_local_files(tmp_path, monkeypatch, shared_data):
    calls = {}

    def load_dataset(name, config=None, split=None, data_files=None):
        calls.update(name=name, config=config, split=split, data_files=data_files)
        with open(data_files) as f:
            return [json.loads(line) for line in f if line.strip()]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (tmp_path / "hub.yaml").write_text(
        f"name: piqa-hub\nkind: choice\nsource: 'hf:json'\nformat: native\nhf_split: train\n"
        f"hf_data_files: {shared_data / 'piqa' / 'valid.jsonl'}\nprompt: 'Question: {{prompt}}\\nAnswer:'\nchat_template: false\n"
    )
    task = load_task(load_task_yaml(tmp_path / "hub.yaml")[0], limit=3)
    assert calls["name"] == "json" and calls["split"] == "train"
    assert len(task.items) == 3 and len(task.items[0].choices) == 2
    [spec] = resolve_task_specs(["hf-gsm8k"])
    assert spec.source == "hf:openai/gsm8k" and spec.hf_config == "main"


def test_hub_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    [spec] = resolve_task_specs(["hf-piqa"])
    with pytest.raises(NexusError, match="needs the 'datasets' package"):
        load_task(spec)


def test_shipped_task_yaml_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "configs" / "tasks").glob("*.yaml")):
        for spec in load_task_yaml(path):
            task = load_task(spec)
            assert task.items and all(item.reference for item in task.items)
