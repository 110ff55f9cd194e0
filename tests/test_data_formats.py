"""Native dataset formats, chat rendering with response masks, the built-in corpus."""

from __future__ import annotations

import json
import operator
import re

import pytest
import torch

from nexus.data import encode_chat, load_examples, render_prompt
from nexus.data.builtin import arithmetic_word_problems, chat_prompt_examples, python_source_snippets
from nexus.errors import NexusError


@pytest.mark.parametrize(
    ("relpath", "kind", "domain"),
    [
        ("gsm8k/train.jsonl", "chat", "math"),
        ("piqa/valid.jsonl", "choice", "chat"),
        ("humaneval/HumanEval.jsonl.gz", "code", "code"),
        ("code_alpaca/code_alpaca_2k.json", "chat", "code"),
        ("chat_prompts/user_oriented_instructions.jsonl", "chat", "chat"),
    ],
)
def test_shared_native_formats(shared_data, relpath, kind, domain):
    examples = load_examples(shared_data / relpath, limit=5)
    assert len(examples) == 5
    assert all(e.kind == kind and e.domain == domain and e.prompt for e in examples)


def test_gsm8k_answer_extracted(shared_data):
    first = load_examples(shared_data / "gsm8k/train.jsonl", limit=1)[0]
    assert first.answer == first.response.rsplit("####", 1)[1].strip().replace(",", "")


def test_generic_rows_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"text": "hello"},
        {"prompt": "p", "response": "r", "domain": "code"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kinds = [e.kind for e in load_examples(path, domain="chat")]
    assert kinds == ["text", "chat", "chat"]
    path.write_text('{"text": "ok"}\n{"goal": "g", "sol1": "a", "label": 0}\n')
    with pytest.raises(NexusError, match=r"d\.jsonl:2: PIQA row is missing field 'sol2'"):
        load_examples(path)
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(NexusError, match=r"d\.jsonl:2: not valid JSON"):
        load_examples(path)
    path.write_text("")
    with pytest.raises(NexusError, match="holds no examples"):
        load_examples(path)


def test_encode_chat_masks_exactly_the_response(tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, "What is 2 + 2?", "4")
    response = [t for t, m in zip(encoded.input_ids, encoded.response_mask, strict=True) if m]
    assert tiny_tokenizer.decode(response) == "4<|im_end|>\n"
    prompt = tiny_tokenizer.decode(encoded.input_ids[: encoded.prompt_length])
    assert prompt == render_prompt(tiny_tokenizer, "What is 2 + 2?")
    cut = encode_chat(tiny_tokenizer, "word " * 100, "short answer", max_length=20)
    assert len(cut.input_ids) == 20 and sum(cut.response_mask) == len(
        tiny_tokenizer("short answer<|im_end|>\n")["input_ids"]
    )


def test_builtin_corpus_is_deterministic_and_correct():
    problems = arithmetic_word_problems(40, seed=3)
    assert problems == arithmetic_word_problems(40, seed=3)
    for p in problems:
        steps = p.response.splitlines()
        assert steps[-1] == f"#### {p.answer}"
        equations = [re.search(r"(\d+) ([-+*/]) (\d+) = (\d+)", line) for line in steps[:-1]]
        assert all(equations)
        ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
        for a, op, b, c in (m.groups() for m in equations):
            assert ops[op](int(a), int(b)) == int(c)
        assert int(equations[-1].group(4)) == int(p.answer)
    code = python_source_snippets(10)
    assert len(code) == 10 and all(c.text.startswith(("def ", "class ")) for c in code)
    assert len(chat_prompt_examples(5)) == 5


def test_code_requests_are_standard_library_headers_in_a_python_block():
    from nexus.data.builtin import CODE_REQUESTS, code_request_examples

    requests = code_request_examples(40, seed=3)
    assert len(requests) == 40 and requests == code_request_examples(40, seed=3)
    assert len({r.source.split(":")[0] for r in requests}) == 40  # one function per file first
    for r in requests:
        request, _, block = r.prompt.partition("\n\n")
        assert request in CODE_REQUESTS and r.kind == "chat" and not r.response
        assert block.startswith("```python\ndef ") and block.endswith('"""\n```')
        compile(block.removeprefix("```python\n").removesuffix("```") + "    pass\n", r.source, "exec")
    assert {r.prompt.partition("\n")[0] for r in requests} == set(CODE_REQUESTS)


def test_teacher_answers_are_cached_per_model(tiny_llama_dir, tmp_path, monkeypatch):
    from nexus.data.builtin import teacher_answers
    from nexus.models import load_model, load_tokenizer

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path))
    model, resolved = load_model(str(tiny_llama_dir))
    tokenizer = load_tokenizer(resolved)
    first = [e.response for e in teacher_answers(model, tokenizer, chat_prompt_examples(3), max_new_tokens=5)]
    assert len(list((tmp_path / "teacher_answers").glob("*.json"))) == 1
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1))
    again = [e.response for e in teacher_answers(model, tokenizer, chat_prompt_examples(3), max_new_tokens=5)]
    assert again == first and not calls, "second call must come from the cache"
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # another model: another cache entry
    with pytest.raises(TypeError):  # generate is stubbed out: proves the cache was not used
        teacher_answers(model, tokenizer, chat_prompt_examples(3), max_new_tokens=5)
