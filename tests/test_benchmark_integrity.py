"""The benchmark's numbers: evaluation splits, training overlap, scoring rules that match their
references (issue 14)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from nexus.benchmark import scoring
from nexus.benchmark.runner import BenchmarkConfig, score_batch
from nexus.benchmark.scoring import LoadedModel
from nexus.benchmark.tasks import Task, TaskItem, TaskSpec, load_task, resolve_task_specs


def _lm(model, tokenizer) -> LoadedModel:
    return LoadedModel("teacher", "test", model, tokenizer, torch.device("cpu"), torch.float32, 0)


# -- acc_norm -----------------------------------------------------------------------------------


def test_acc_norm_divides_by_the_choice_length_without_the_delimiter(monkeypatch):
    # lm-eval: acc_norm = argmax(ll / len(choice)) with the choice as doc_to_choice gives it,
    # without the " " target delimiter. -2.0/2 = -1.0 < -3.9/4 = -0.975 -> choice 1; counting the
    # delimiter (-2.0/3 = -0.67 > -3.9/5 = -0.78) would pick choice 0.
    spec = TaskSpec("mc", "choice", "x.jsonl", chat_template=False)
    item = TaskItem("x:1", "Q", "Q", choices=[" ab", " abcd"], label=1)
    fixed = [scoring.LogLikelihood(-2.0, False, 1), scoring.LogLikelihood(-3.9, False, 2)]
    monkeypatch.setattr(scoring, "loglikelihoods", lambda lm, requests, **kw: fixed)
    lm = SimpleNamespace(format_prompt=lambda p, *args: p)
    (record,) = score_batch(lm, Task(spec, [item]), [item], BenchmarkConfig())
    assert record["pred"] == 0  # raw log-likelihood: -2.0 > -3.9
    assert record["pred_norm"] == 1 and record["correct_norm"]
    assert not record["correct"]  # scored by acc
    # a task whose choices differ in length can be scored by acc_norm (builtin-chat is)
    by_norm = dataclass_replace(spec, choice_metric="acc_norm")
    (record,) = score_batch(lm, Task(by_norm, [item]), [item], BenchmarkConfig())
    assert record["correct"]
    assert {s.name: s for s in resolve_task_specs(["builtin"])}["builtin-chat"].choice_metric == "acc_norm"


# -- generation decoding with a SentencePiece tokenizer ----------------------------------------


def _sentencepiece_tokenizer():
    """A tiny Llama-2-style tokenizer: BPE over Metaspace pieces ('▁' marks a space; the decoder
    drops the '▁' that starts a sequence), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    texts = ["def add(a, b):\n    return a + b\n", "Hello world, the answer is 42."] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


class _Scripted(torch.nn.Module):
    """A 'model' whose greedy continuation is fixed: ``script`` then EOS."""

    def __init__(self, script: list[int], eos: int) -> None:
        super().__init__()
        self.script, self.eos = script, eos
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        self.config = SimpleNamespace(max_position_embeddings=512)

    def generate(self, input_ids, max_new_tokens, **kwargs):
        cont = torch.tensor(self.script + [self.eos])[:max_new_tokens]
        return torch.cat([input_ids, cont.expand(input_ids.shape[0], -1)], dim=1)


def test_generation_keeps_the_leading_space_and_indentation_of_sentencepiece_tokens():
    tok = _sentencepiece_tokenizer()
    prompt = "def add(a, b):\n"
    body = "    return a + b\n"
    whole = tok(prompt + body, add_special_tokens=False)["input_ids"]
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    assert whole[: len(head)] == head
    script = whole[len(head) :]
    assert tok.decode(script) != body  # decoding the continuation alone loses a space
    lm = _lm(_Scripted(script, tok.eos_token_id), tok)
    (gen,) = scoring.generate(lm, [prompt], max_new_tokens=64, chat_template=False)
    assert gen.text == body
    # a word after a space keeps it too ("Hello" + " world")
    w_head = tok("Hello", add_special_tokens=False)["input_ids"]
    w_all = tok("Hello world", add_special_tokens=False)["input_ids"]
    lm = _lm(_Scripted(w_all[len(w_head) :], tok.eos_token_id), tok)
    assert scoring.generate(lm, ["Hello"], max_new_tokens=8, chat_template=False)[0].text == " world"


# -- evaluation splits --------------------------------------------------------------------------


def test_shared_sets_have_a_stable_eval_split_that_training_never_reads(shared_data, tmp_path):
    from nexus.data.corpus import load_source
    from nexus.data.formats import load_examples
    from nexus.data.splits import split_of

    path = shared_data / "gsm8k" / "train.jsonl"
    every = load_examples(path)
    eval_prompts = {e.prompt for e in every if split_of(e) == "eval"}
    assert 0.07 * len(every) < len(eval_prompts) < 0.13 * len(every)
    trained = load_source(str(path))
    assert len(trained) == len(every) - sum(split_of(e) == "eval" for e in every)
    assert not eval_prompts & {e.prompt for e in trained}
    # the same rows in another order and another format (a JSON array) split the same way
    rows = [json.loads(line) for line in path.read_text().splitlines()[:300]][::-1]
    copy = tmp_path / "gsm8k.json"
    copy.write_text(json.dumps(rows))
    assert {e.prompt for e in load_source(str(copy))} == {
        e.prompt for e in load_examples(copy) if e.prompt not in eval_prompts
    }
    # the benchmark's gsm8k, code_alpaca and self_instruct tasks score only evaluation rows
    for spec in resolve_task_specs(["gsm8k", "code_alpaca", "self_instruct"], shared_data):
        task = load_task(spec, limit=None if spec.name == "self_instruct" else 40)
        assert task.name == spec.name
        source = load_examples(spec.source)
        by_prompt = {" ".join(e.prompt.split()): split_of(e) for e in source}
        rows = {" ".join(it.text.split()) for it in task.items}
        assert all(any(r.startswith(p) for p in by_prompt if by_prompt[p] == "eval") for r in rows)
        trained = {" ".join(e.prompt.split()) for e in load_source(spec.source)}
        assert not any(r.startswith(p) for r in rows for p in trained if p)


def test_a_task_scored_on_training_rows_says_so_in_its_name(shared_data, tmp_path):
    yaml = tmp_path / "t.yaml"
    yaml.write_text(
        f"name: my-gsm8k\nkind: generate\nsource: {shared_data / 'gsm8k' / 'train.jsonl'}\n"
        "format: native\nsplit: all\n"
    )
    (spec,) = resolve_task_specs([str(yaml)])
    assert load_task(spec, limit=5).name == "my-gsm8k[train-split]"
    assert load_task(dataclass_replace(spec, split="eval"), limit=5).name == "my-gsm8k"


def dataclass_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


# -- answer extraction ------------------------------------------------------------------------


def test_code_answers_are_read_fence_aware():
    head = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n'
    # opened with the fence and the prompt's code: the body runs to the closing fence, prose after it is dropped
    assert scoring.code_parts("    return a + b\n```\n\nThis adds.", head, "add", inside_fence=True) == (
        head,
        "    return a + b\n",
    )
    # opened with the fence, the model writes the whole function: it is the program (after the imports)
    whole = "def add(a: int, b: int) -> int:\n    return a + b\n```\nDone."
    assert scoring.code_parts(whole, head, "add", inside_fence=True) == (
        "from typing import List\n",
        "def add(a: int, b: int) -> int:\n    return a + b\n",
    )
    # prose, then a fenced block that defines the function: the block is the program (with the imports)
    answer = "Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n```\nIt returns the sum."
    assert scoring.code_parts(answer, head, "add", inside_fence=False) == (
        "from typing import List\n",
        "def add(a, b):\n    return a + b\n",
    )
    # a fenced block holding only a body continues the prompt; an unclosed fence runs to the end
    assert scoring.code_parts("```\n    return a + b", head, "add", inside_fence=False) == (
        head,
        "    return a + b",
    )
    # no fence: a base model's raw completion
    assert scoring.code_parts("    return a + b\n", head, "add", inside_fence=False) == (
        head,
        "    return a + b\n",
    )


def test_code_answer_with_prose_first_passes_in_the_sandbox():
    from nexus.benchmark.builtin_suite import CODE_PROBLEMS
    from nexus.benchmark.sandbox import humaneval_program, run_sandboxed

    problem = next(p for p in CODE_PROBLEMS if p["entry_point"] == "max_of_list")
    answer = "Sure! Here it is:\n```python\ndef max_of_list(numbers: List[int]) -> int:\n    return max(numbers)\n```"
    head, body = scoring.code_parts(answer, problem["prompt"], "max_of_list", inside_fence=False)
    assert run_sandboxed(humaneval_program(head, body, problem["test"], "max_of_list")).passed


def test_math_answers_are_extracted_in_every_common_form():
    from nexus.benchmark.tasks import NUMERIC_ANSWER_REGEX as regexes

    assert scoring.extract_answer("3 + 4 = 7\n#### 7", regexes) == "7"
    assert scoring.extract_answer("so the total is $\\boxed{1,200}$ and 5 more", regexes) == "1,200"
    assert scoring.extract_answer("The answer is 12. Check: 12 - 3 = 9", regexes) == "12"
    assert scoring.extract_answer("She has 5 + 3 = 8 apples left.", regexes) == "8"
    assert scoring.answers_match(scoring.extract_answer("\\boxed{42}", regexes), "42")


def test_builtin_tasks_prompt_instruct_models_with_their_chat_turns(tiny_tokenizer):
    spec = {s.name: s for s in resolve_task_specs(["builtin"])}
    math = load_task(spec["builtin-math"], limit=2)
    assert len(math.items[0].shots) == 4 and all(
        a.rstrip().split()[-2] == "####" for _, a in math.items[0].shots
    )
    assert not {q for q, _ in math.items[0].shots} & {it.text.split("\n")[0] for it in math.items}
    lm = _lm(None, tiny_tokenizer)
    it = math.items[0]
    text = lm.format_prompt(it.prompt, True, it.shots, it.response_prefix)
    assert text.count("<|im_start|>user") == 5 and text.count("<|im_start|>assistant") == 5
    assert text.endswith("<|im_start|>assistant\n")
    code = load_task(spec["builtin-code"], limit=1).items[0]
    text = lm.format_prompt(code.prompt, True, code.shots, code.response_prefix)
    assert code.code in text and text.endswith("<|im_start|>assistant\n```python\n")
    # a base model without a chat template gets plain text with the same answer opening
    lm.tokenizer = SimpleNamespace(chat_template=None)
    assert (
        lm.format_prompt(code.prompt, True, [], code.response_prefix)
        == f"{code.prompt}\n{code.response_prefix}"
    )


# -- training-data overlap (13-gram decontamination) -------------------------------------------


def test_thirteen_gram_overlap_marks_items_found_in_training_text():
    from nexus.benchmark.decontam import dirty_items

    item = "Ava has 12 apples. Ben gives Ava 8 more, and then Ava gives away 3. How many apples now?"
    words = item.replace(".", "").replace(",", "").replace("?", "").split()
    thirteen = " ".join(words[2:15]).upper()  # case and punctuation do not matter
    twelve = " ".join(words[2:14])
    short = "Write a haiku about snow."
    assert dirty_items([item, item, short], [f"prefix {thirteen} suffix", "write a HAIKU about snow!"]) == [
        True,
        True,
        True,
    ]
    assert dirty_items([item, short], [twelve, "a haiku about snow"]) == [False, False]


def test_training_record_follows_the_phase_configs_and_the_release_manifest(tmp_path):
    from nexus.benchmark.decontam import training_record

    results = tmp_path / "results"
    for phase, cfg in {
        "distill": "data:\n- builtin\nseed: 3\nstudent: null\n",
        "train": "data:\n- /data/math.jsonl\nseed: 0\nstudent: null\n",
    }.items():
        (results / phase / "model").mkdir(parents=True)
        (results / phase / "config.yaml").write_text(cfg)
    record = training_record(str(results / "train" / "model"))
    assert record.sources == [("/data/math.jsonl", 0), ("builtin", 3)]
    assert "train/config.yaml" in record.found_in and "distill/config.yaml" in record.found_in
    release = tmp_path / "nexus-release-v1"
    release.mkdir()
    (release / "nexus_manifest.json").write_text(
        json.dumps(
            {
                "configs": {
                    "pipeline": {"distill": {"data": ["builtin"]}, "router": {"data": ["x.jsonl"], "seed": 2}}
                }
            }
        )
    )
    assert training_record(str(release)).sources == [("builtin", 0), ("x.jsonl", 2)]
    assert training_record(str(tmp_path)).missing  # no record: said, not guessed
    assert training_record("default").missing


def test_benchmark_reports_overlap_per_task_and_scores_clean_items(tmp_path, tiny_llama_dir, tiny_qwen2_dir):
    import shutil

    from nexus.benchmark.runner import run_benchmark

    spec = {s.name: s for s in resolve_task_specs(["builtin-math"])}["builtin-math"]
    items = load_task(spec, limit=3, seed=1234).items
    leaked = tmp_path / "leaked.jsonl"  # two of the three scored questions, in the training data
    leaked.write_text(
        "".join(json.dumps({"prompt": it.text.split("\n")[0], "response": "42"}) + "\n" for it in items[:2])
    )
    student = tmp_path / "results" / "train" / "model"
    shutil.copytree(tiny_qwen2_dir, student)
    (student.parent / "config.yaml").write_text(f"data:\n- {leaked}\nseed: 0\nstudent: {tiny_qwen2_dir}\n")
    cfg = BenchmarkConfig(
        student=str(student),
        teacher=str(tiny_llama_dir),
        tasks=["builtin-math", "builtin-chat"],
        limit=3,
        max_new_tokens=4,
        precision="fp32",
        bootstrap_samples=50,
        fidelity=False,
    )
    summary = run_benchmark(cfg, results_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "benchmark_results.json").read_text())
    math = next(t for t in results["tasks"] if t["summary"]["name"] == "builtin-math")
    assert math["summary"]["overlap"]["dirty_items"] == 2 and math["summary"]["overlap"]["clean_items"] == 1
    clean_item = next(it for it in math["items"] if not it["in_training_data"])
    assert math["summary"]["overlap"]["teacher_accuracy_clean"] == float(clean_item["teacher"]["correct"])
    chat = next(t for t in results["tasks"] if t["summary"]["name"] == "builtin-chat")
    assert chat["summary"]["overlap"]["dirty_items"] == 0
    assert results["decontamination"]["sources"] == [str(leaked)]
    assert "builtin-math: 2/3 items in the training data" in summary["console"]
    # random tiny models: the teacher is flagged as near chance on the generation task
    assert math["summary"]["teacher_near_chance"] and "Teacher near chance" in summary["console"]
    assert "Integrity checks" in (tmp_path / "out" / "benchmark_comparison.md").read_text()


def test_near_chance_rule():
    from nexus.benchmark.stats import binomial_tail, near_chance

    assert near_chance([False] * 20, 0.0)  # zero of twenty measures nothing
    assert not near_chance([True] * 6 + [False] * 14, 0.0)
    assert near_chance([True] * 13 + [False] * 11, 0.5)  # 54% on a 2-choice task
    assert not near_chance([True] * 20 + [False] * 4, 0.5)
    assert binomial_tail(2, 2, 0.5) == pytest.approx(0.25) and binomial_tail(0, 5, 0.3) == 1.0
    assert binomial_tail(3, 5, 0.3) == pytest.approx(0.16308)  # 10*.3^3*.7^2 + 5*.3^4*.7 + .3^5
    # all 1338 PIQA rows: exact terms overflow a float; the log-space sum matches exact arithmetic
    exact = sum(math.comb(1338, i) for i in range(700, 1339)) / 2**1338
    assert binomial_tail(700, 1338, 0.5) == pytest.approx(exact, rel=1e-9)
    assert not near_chance([True] * 855 + [False] * 483, 0.5)  # 63.9%: the default teacher


def test_release_benchmark_checks_the_pipelines_training_sources(monkeypatch, tmp_path):
    from nexus.benchmark import runner
    from nexus.pipeline.runner import PipelineConfig
    from nexus.release.run import ReleaseConfig, _benchmark

    seen = {}
    monkeypatch.setattr(runner, "run_benchmark", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    config = PipelineConfig(seed=5, distill={"data": ["builtin"]}, train={"data": ["x.jsonl", "builtin"]})
    ctx = SimpleNamespace(config=config, results_dir=tmp_path, flags=None, printer=None)
    _benchmark(ReleaseConfig(), tmp_path / "model", ctx)
    assert seen["cfg"].training_data == ["builtin", "x.jsonl"] and seen["cfg"].training_seed == 5
