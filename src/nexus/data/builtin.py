"""The built-in offline corpus: no network, no third-party data in the repository.

* ``code``: real Python source found on this machine (the standard library of the running
  interpreter), cut at top-level ``def``/``class`` boundaries;
* ``math``: arithmetic word problems generated here, with worked answers in GSM8K style
  (``#### N``), so the same answer extraction applies;
* ``chat``: prompts written for this project; their responses are the teacher's own greedy
  answers (:func:`teacher_answers`), i.e. sequence-level distillation data.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import sysconfig
import time
from pathlib import Path

from nexus.data.formats import Example

log = logging.getLogger(__name__)

CHAT_PROMPTS = (
    "Explain in two sentences why the sky looks blue.",
    "Give three tips for writing a clear email to a busy colleague.",
    "What is the difference between weather and climate?",
    "Write a short, friendly reminder that the team meeting moved to Thursday.",
    "Summarize what a computer's CPU does, for a ten-year-old.",
    "List four healthy breakfast ideas that take under five minutes.",
    "Why do leaves change colour in autumn?",
    "Suggest a name for a small bakery that specializes in bread, and say why.",
    "How should I prepare for a job interview the night before?",
    "Explain what a password manager is and why people use one.",
    "What are the main causes of traffic jams in cities?",
    "Write a haiku about the first snow of winter.",
    "Give me a simple plan to learn to cook in one month.",
    "What is the purpose of a budget, and how do I start one?",
    "Describe how a bicycle's gears make climbing hills easier.",
    "Write a two-sentence thank-you note to a neighbour who watered my plants.",
    "What should I pack for a weekend hiking trip?",
    "Explain the difference between a virus and a bacterium.",
    "How can I make a small apartment feel more spacious?",
    "Give three reasons why sleep matters for learning.",
    "What is recycling, and which materials are easiest to recycle?",
    "Explain what an API is using a restaurant analogy.",
    "Write a short motivational message for a friend running their first marathon.",
    "How do I politely decline an invitation to a party?",
    "Why does ice float on water?",
    "Describe the water cycle in four steps.",
    "Give a beginner three tips for taking better photos with a phone.",
    "What is the difference between a list and a dictionary in Python?",
    "Suggest a fun indoor activity for a rainy afternoon with kids.",
    "Explain what inflation means in simple terms.",
    "How do vaccines help the body fight disease?",
    "Write a short product description for a reusable water bottle.",
    "What are good habits for keeping a tidy desk?",
    "Explain why the moon has phases.",
    "Give two arguments for and two against working from home.",
    "How do I apologize to a friend after missing their birthday?",
    "What is photosynthesis, in one paragraph?",
    "Recommend a daily routine for learning a new language.",
    "Explain the rule of thirds in photography.",
    "What are the benefits of walking every day?",
    "Write a limerick about a cat who loves boxes.",
    "How does a refrigerator keep food cold?",
    "Give three tips for staying focused while studying.",
    "What does a good meeting agenda contain?",
    "Explain the difference between saving and investing.",
    "Why do we have seasons on Earth?",
    "Describe how to make a cup of tea, step by step.",
    "What is a good way to remember people's names?",
    "Explain what machine learning is in three sentences.",
    "How can I reduce the amount of plastic I use at home?",
    "Write an opening line for a mystery story set in a library.",
    "What are the signs that a plant needs more water?",
    "Explain how a rainbow forms.",
    "Give feedback on this sentence: 'Me and him goes to the store yesterday.'",
    "How do I start a conversation with someone new at a conference?",
    "What is the difference between a simile and a metaphor? Give an example of each.",
    "Explain why exercise improves mood.",
    "Plan a simple three-course dinner for four people.",
    "What should I consider when adopting a dog?",
    "Describe the job of a librarian in a few sentences.",
)

_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farah",
    "Gabe",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
)
_ITEMS = (
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "books",
    "cookies",
    "cards",
    "shells",
    "stamps",
    "coins",
)


def arithmetic_word_problems(n: int, seed: int = 0) -> list[Example]:
    """``n`` generated word problems with worked, GSM8K-style answers (``#### N``)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        name, other = rng.sample(_NAMES, 2)
        item = rng.choice(_ITEMS)
        kind = i % 4
        if kind == 0:
            a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 20)
            total = a + b - c
            q = f"{name} has {a} {item}. {other} gives {name} {b} more, and then {name} gives away {c}. How many {item} does {name} have now?"
            work = f"After receiving {b}, {name} has {a} + {b} = {a + b} {item}.\nAfter giving away {c}, {name} has {a + b} - {c} = {total} {item}."
        elif kind == 1:
            boxes, per, extra = rng.randint(2, 12), rng.randint(3, 15), rng.randint(0, 9)
            total = boxes * per + extra
            q = f"{name} buys {boxes} boxes of {item} with {per} {item} in each box, and finds {extra} loose {item}. How many {item} does {name} have in total?"
            work = f"The boxes hold {boxes} * {per} = {boxes * per} {item}.\nWith the loose ones, {name} has {boxes * per} + {extra} = {total} {item}."
        elif kind == 2:
            groups, per = rng.randint(2, 9), rng.randint(2, 12)
            total_items = groups * per
            total = per
            q = f"{name} shares {total_items} {item} equally among {groups} friends. How many {item} does each friend get?"
            work = f"Each friend gets {total_items} / {groups} = {per} {item}."
        else:
            price, qty, paid = rng.randint(2, 15), rng.randint(2, 8), 0
            cost = price * qty
            paid = cost + rng.randint(1, 30)
            total = paid - cost
            q = f"{name} buys {qty} {item} at {price} dollars each and pays with {paid} dollars. How much change does {name} get?"
            work = f"The {item} cost {qty} * {price} = {cost} dollars.\nThe change is {paid} - {cost} = {total} dollars."
        examples.append(
            Example(
                "chat",
                f"builtin:math:{seed}:{i}",
                "math",
                prompt=q,
                response=f"{work}\n#### {total}",
                answer=str(total),
            )
        )
    return examples


def python_source_snippets(
    n: int, seed: int = 0, max_chars: int = 1500, root: str | Path | None = None
) -> list[Example]:
    """``n`` top-level functions/classes from the Python standard library on this machine: the
    first qualifying one of each file (in ``seed`` order), then the second of each, and so on, so
    the sample stays spread over files and a larger ``n`` extends a smaller one."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    rng = random.Random(seed)
    rng.shuffle(files)
    per_file: dict[Path, list[Example]] = {}

    def snippets(path: Path) -> list[Example]:
        if path not in per_file:
            found: list[Example] = []
            try:
                source = path.read_text(encoding="utf-8")
                tree = ast.parse(source)
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                tree, source = None, ""
            lines = source.splitlines()
            for node in tree.body if tree is not None else ():
                if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.end_lineno is None:
                    continue
                snippet = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                if 200 <= len(snippet) <= max_chars:
                    found.append(Example("text", f"{path}:{node.lineno}", "code", text=snippet))
            per_file[path] = found
        return per_file[path]

    examples: list[Example] = []
    depth = 0
    while len(examples) < n:
        added = 0
        for path in files:
            if len(examples) >= n:
                break
            found = snippets(path)
            if depth < len(found):
                examples.append(found[depth])
                added += 1
        if not added:
            break  # every file is exhausted
        depth += 1
    return examples


# How a code request opens (the first is lm-evaluation-harness's and the benchmark's own wording)
CODE_REQUESTS = (
    "Complete the following Python function.",
    "Write the body of this Python function.",
    "Implement this function in Python.",
    "Finish this Python function so that it does what its docstring says.",
)


def code_request_examples(n: int, seed: int = 0, root: str | Path | None = None) -> list[Example]:
    """``n`` chat prompts asking for a standard-library function of this machine given its header
    and docstring (a request of :data:`CODE_REQUESTS`, the header in a ```python block); the teacher
    writes the answers (:func:`teacher_answers`). Without them a student never sees a chat turn
    that answers with code: the pruned students close the code block at once (``` after
    ```python, P ~ 0.4 against the teacher's 0.000), and score 0 on the built-in code task."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    rng = random.Random(seed)
    rng.shuffle(files)
    per_file = [_code_requests_in(path) for path in files]
    examples: list[Example] = []
    for depth in range(max((len(found) for found in per_file), default=0)):  # spread over files
        for found in per_file:
            if depth < len(found) and len(examples) < n:
                request = CODE_REQUESTS[len(examples) % len(CODE_REQUESTS)]
                where, block = found[depth]
                examples.append(Example("chat", where, "code", prompt=f"{request}\n\n```python\n{block}```"))
    return examples


def _code_requests_in(path: Path) -> list[tuple[str, str]]:
    """(file:line, header + docstring) of ``path``'s public top-level functions with a docstring."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    found = []
    for node in tree.body:
        doc = ast.get_docstring(node, clean=True) if isinstance(node, ast.FunctionDef) else None
        if not doc or node.name.startswith("_") or not 20 <= len(doc) <= 600:
            continue
        header = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])
        if not header.lstrip().startswith("def ") or len(header) > 400:
            continue
        indented = "\n".join("    " + line if line else line for line in doc.splitlines())
        found.append((f"{path}:{node.lineno}", f'{header}\n    """{indented.lstrip()}\n    """\n'))
    return found


def chat_prompt_examples(n: int | None = None, seed: int = 0) -> list[Example]:
    """Project-written chat prompts (no responses yet: see :func:`teacher_answers`)."""
    prompts = list(CHAT_PROMPTS)
    random.Random(seed).shuffle(prompts)
    chosen = prompts if n is None else prompts[:n]
    return [Example("chat", f"builtin:chat:{i}", "chat", prompt=p) for i, p in enumerate(chosen)]


def _answers_cache_file(
    model, examples: list[Example], max_new_tokens: int, sampling: dict | None = None
) -> Path:
    """Where a model's answers to these prompts are cached: keyed by the model's identity
    (its path, size and a slice of its embedding weights), the prompts, the length cap and the
    sampling settings (none: greedy)."""
    import hashlib
    import os

    digest = hashlib.sha256()
    digest.update(str(getattr(model.config, "_name_or_path", "")).encode())
    digest.update(str(sum(p.numel() for p in model.parameters())).encode())
    embedding = model.get_input_embeddings().weight
    digest.update(embedding.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    digest.update(json.dumps([ex.prompt for ex in examples]).encode())
    digest.update(str(max_new_tokens).encode())
    if sampling is not None:
        digest.update(json.dumps(sampling, sort_keys=True).encode())
    root = Path(os.environ.get("NEXUS_CACHE_DIR", Path.home() / ".cache" / "nexus"))
    return root / "teacher_answers" / f"{digest.hexdigest()[:24]}.json"


def teacher_answers(
    model,
    tokenizer,
    examples: list[Example],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    cache: bool = True,
    sampling: dict | None = None,
) -> list[Example]:
    """Fill each example's ``response`` with the model's answer (left-padded, KV-cached batches):
    greedy, or sampled with ``sampling`` = ``{"temperature": T, "top_k": K, "top_p": P, "seed": S}``
    (:class:`nexus.inference.sampling.TopKSampler`; the batch starting at example ``b`` draws from
    a generator seeded with ``S + b``, so the answers are reproducible and the caller's RNG state
    is left untouched).

    Answers are cached on disk (``$NEXUS_CACHE_DIR`` or ``~/.cache/nexus``) and every phase that
    asks the same model the same prompts with the same settings reuses them.
    """
    import torch
    from transformers import LogitsProcessorList

    from nexus.data.templates import render_prompt
    from nexus.inference.sampling import TopKSampler
    from nexus.utils import atomic_write_json

    cache_file = _answers_cache_file(model, examples, max_new_tokens, sampling) if cache else None
    if cache_file is not None and cache_file.is_file():
        try:
            answers = json.loads(cache_file.read_text())
            if len(answers) == len(examples):
                for ex, answer in zip(examples, answers, strict=True):
                    ex.response = answer
                return examples
        except (OSError, ValueError):
            pass  # a damaged cache entry is regenerated below

    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    began, written = time.perf_counter(), 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            texts = [render_prompt(tokenizer, ex.prompt) for ex in batch]
            enc = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template
            )
            processors = LogitsProcessorList()
            if sampling is not None:
                generator = torch.Generator().manual_seed(sampling["seed"] + start)
                processors.append(
                    TopKSampler(
                        sampling["temperature"],
                        top_k=sampling["top_k"],
                        top_p=sampling["top_p"],
                        generator=generator,
                    )
                )
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    logits_processor=processors,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for ex, ids in zip(batch, new, strict=True):
                ex.response = tokenizer.decode(ids, skip_special_tokens=True).strip()
            written += int((new != tokenizer.pad_token_id).sum())
            if len(examples) > batch_size:  # minutes of work: say how far it is
                elapsed = time.perf_counter() - began
                log.info(
                    "teacher answers: %d/%d prompts, %d tokens, %.0f tokens/s",
                    start + len(batch),
                    len(examples),
                    written,
                    written / max(elapsed, 1e-9),
                )
    finally:
        tokenizer.padding_side = padding_side
    if cache_file is not None:
        atomic_write_json(cache_file, [ex.response for ex in examples])
    return examples
