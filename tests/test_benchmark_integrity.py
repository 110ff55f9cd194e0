"""The benchmark's numbers: evaluation splits, training overlap, scoring rules that match their
references (issue 14)."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
    lm = SimpleNamespace(format_prompt=lambda p, c: p)
    (record,) = score_batch(lm, Task(spec, [item]), [item], BenchmarkConfig())
    assert record["pred"] == 0  # raw log-likelihood: -2.0 > -3.9
    assert record["pred_norm"] == 1 and record["correct_norm"]


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
