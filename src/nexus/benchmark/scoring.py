"""The scoring rules, shared by both models.

* :func:`loglikelihoods` -- sum of log p(continuation | context) per request, batched: requests
  are sorted by length and packed into right-padded batches under a token budget, one forward
  per batch, log-softmax taken only at the continuation positions. Context/continuation are
  split as lm-evaluation-harness does (trailing context spaces move to the continuation; the
  continuation tokens are those of ``tok(context + continuation)`` after ``tok(context)``);
* :func:`choice_predictions` -- ``acc`` (argmax log-likelihood) and ``acc_norm`` (argmax
  log-likelihood divided by the length in characters of the choice's own text, without the
  delimiter put before it), as lm-evaluation-harness;
* :func:`generate` -- greedy, left-padded batches, KV cache, EOS and stop strings, a
  ``max_new_tokens`` cap; each output is decoded with its prompt and the prompt's text stripped
  (:func:`decode_continuation`), then cut at the first stop string;
* :func:`extract_answer` / :func:`answers_match` -- regex answer extraction and normalized exact
  match (numbers compare by value); :func:`rouge_l_f1` for free-form references.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nexus.data.templates import render_prompt


@dataclass
class LoadedModel:
    """A model with its tokenizer, loaded once per run."""

    role: str  # "teacher" | "student"
    spec: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    parameters: int
    described: str = ""

    def format_prompt(
        self,
        prompt: str,
        chat_template: bool,
        shots: Sequence[Sequence[str]] = (),
        response_prefix: str = "",
    ) -> str:
        """The prompt as this model sees it. With ``chat_template`` and a template present: the
        few-shot ``(question, answer)`` pairs as earlier user/assistant turns, the prompt as the
        last user turn, and the assistant's answer opened with ``response_prefix``. Otherwise
        (base models) plain text: each shot as question, newline, answer, blank line, then the
        prompt and the prefix on the next line."""
        if chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = []
            for question, answer in shots:
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": prompt})
            return render_prompt(self.tokenizer, messages) + response_prefix
        text = "".join(f"{question}\n{answer}\n\n" for question, answer in shots) + prompt
        return f"{text}\n{response_prefix}" if response_prefix else text

    @property
    def max_length(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", 2048) or 2048)


# -- log-likelihood ---------------------------------------------------------------------------


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split as lm-evaluation-harness does."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    cont = whole[len(ctx) :]
    if not ctx:  # nothing to condition on: start from the end-of-text token
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [bos]
    return ctx, cont


@dataclass
class LogLikelihood:
    logprob: float  # sum of log p over the continuation tokens
    is_greedy: bool  # every continuation token was the argmax
    tokens: int  # continuation length in tokens


def loglikelihoods(
    lm: LoadedModel,
    requests: Sequence[tuple[str, str]],
    *,
    max_batch_tokens: int = 4096,
) -> list[LogLikelihood]:
    """log p(continuation | context) for each ``(context, continuation)``, in request order."""
    encoded = []
    for context, continuation in requests:
        ctx, cont = encode_pair(lm.tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"empty continuation after tokenization for context {context[:60]!r}")
        full = (ctx + cont)[-(lm.max_length + 1) :]  # left-truncate very long contexts
        n_cont = min(len(cont), len(full) - 1)
        encoded.append((full[:-1], full[-n_cont:]))  # model inputs, continuation targets
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    results: list[LogLikelihood | None] = [None] * len(encoded)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]][0])
        size = max(1, min(len(order) - start, max_batch_tokens // max(1, width)))
        batch = order[start : start + size]
        start += size
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = encoded[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = lm.model(
                input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)
            ).logits  # (B, T, V)
        for row, i in enumerate(batch):
            seq, targets = encoded[i]
            # The last len(targets) input positions predict the continuation tokens.
            logp = torch.log_softmax(
                logits[row, len(seq) - len(targets) : len(seq)].float(), dim=-1
            )  # (n, V)
            target = torch.tensor(targets, device=logp.device)
            picked = logp.gather(1, target[:, None]).squeeze(1)  # (n,)
            greedy = bool((logp.argmax(-1) == target).all())
            results[i] = LogLikelihood(float(picked.sum()), greedy, len(targets))
    return results  # type: ignore[return-value]


def choice_predictions(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(acc prediction, acc_norm prediction)``: argmax of the log-likelihoods, and of the
    log-likelihoods divided by each choice's length in characters (lm-evaluation-harness).

    ``choices`` are the choices' own texts, as lm-eval's ``doc_to_choice`` gives them: without the
    target delimiter that the scored continuation starts with."""
    if len(logprobs) != len(choices) or not choices:
        raise ValueError("need one log-likelihood per choice")
    pred = max(range(len(logprobs)), key=lambda k: logprobs[k])
    norm = [lp / max(1, len(c)) for lp, c in zip(logprobs, choices, strict=True)]
    pred_norm = max(range(len(norm)), key=lambda k: norm[k])
    return pred, pred_norm


# -- generation -------------------------------------------------------------------------------


@dataclass
class Generation:
    text: str  # the continuation, cut at the first stop string
    tokens: int  # tokens generated for this item (up to and including EOS / the stop)
    seconds: float  # wall time of the batch this item was generated in


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut]


def decode_continuation(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text ``new_ids`` add after ``prompt_ids``: decode prompt + continuation and strip the
    decoded prompt. Decoding the continuation alone drops the leading space that SentencePiece
    tokenizers (Llama-2 / Mistral style) fold into a word's first token, which shifts the
    indentation of generated code."""
    prompt_ids, new_ids = list(prompt_ids), list(new_ids)
    prefix = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
    if whole.startswith(prefix):
        return whole[len(prefix) :]
    return tokenizer.decode(new_ids, skip_special_tokens=True)  # a tokenizer that rewrites the prompt


class _StopOnStrings:
    """Per-row stopping: a row is done once its decoded continuation holds a stop string."""

    def __init__(self, tokenizer, prompts: list[list[int]], stop: Sequence[str]) -> None:
        self.tokenizer, self.prompts, self.stop = tokenizer, prompts, list(stop)
        self.prompt_length = max(len(p) for p in prompts)  # the left-padded width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_length :].tolist()
        texts = [decode_continuation(self.tokenizer, p, n) for p, n in zip(self.prompts, new, strict=True)]
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _stop_token_ids(tokenizer, model) -> list[int]:
    ids = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list | tuple):
            ids.update(int(c) for c in candidate)
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    chat_template: bool = True,
) -> list[Generation]:
    """Greedy continuations of ``prompts`` as one left-padded batch (the caller picks the batch)."""
    from transformers import StoppingCriteriaList

    tok = lm.tokenizer
    texts = [lm.format_prompt(p, chat_template) for p in prompts]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    prompt_length = enc["input_ids"].shape[1]
    prompt_ids = [
        [t for t, m in zip(ids, mask, strict=True) if m]
        for ids, mask in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), strict=True)
    ]  # each row's own prompt, without the left padding
    room = max(1, lm.max_length - prompt_length)
    eos = _stop_token_ids(tok, lm.model)
    criteria = StoppingCriteriaList([_StopOnStrings(tok, prompt_ids, stop)]) if stop else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=enc["input_ids"].to(lm.device),
            attention_mask=enc["attention_mask"].to(lm.device),
            max_new_tokens=min(max_new_tokens, room),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            use_cache=True,
            eos_token_id=eos,
            pad_token_id=pad,
            stopping_criteria=criteria,
        )
    seconds = time.perf_counter() - start
    results = []
    for prompt, row in zip(prompt_ids, out[:, prompt_length:].tolist(), strict=True):
        n = len(row)
        for k, t in enumerate(row):
            if t in eos:
                n = k + 1
                break
        text = decode_continuation(tok, prompt, row[:n])
        results.append(Generation(truncate_at_stop(text, stop), n, seconds))
    return results


# -- answers ----------------------------------------------------------------------------------


def code_parts(text: str, code_prompt: str, entry_point: str, *, inside_fence: bool) -> tuple[str, str]:
    """``(head, completion)`` of the program that checks a code answer, read fence-aware as
    common harnesses (evalplus, bigcode-evaluation-harness) read instruct models' answers:

    * the code: with ``inside_fence`` (the answer was opened with a code fence), the text up to
      the closing fence; else the first fenced block when there is one (prose before or after it
      is ignored; an unclosed fence runs to the end); else the whole text (a raw completion);
    * code that defines ``entry_point`` itself is the whole program, after the prompt's imports;
      any other code continues ``code_prompt``.
    """
    if inside_fence:
        code = re.split(r"^[ \t]*```", text, maxsplit=1, flags=re.M)[0]
    else:
        block = re.search(r"^[ \t]*```[\w+-]*[ \t]*\n(.*?)(?:^[ \t]*```|\Z)", text, flags=re.M | re.S)
        code = text if block is None else block.group(1)
    if re.search(rf"^def {re.escape(entry_point)}\s*\(", code, flags=re.M):
        imports = [ln for ln in code_prompt.splitlines() if ln.startswith(("import ", "from "))]
        return "".join(f"{ln}\n" for ln in imports), code
    return code_prompt, code


def extract_answer(text: str, regexes: Sequence[str]) -> str | None:
    """Group 1 (or the whole match) of the last match of the first regex that matches; without
    regexes, the stripped text."""
    if not regexes:
        return text.strip()
    for pattern in regexes:
        matches = list(re.finditer(pattern, text))
        if matches:
            m = matches[-1]
            return (m.group(1) if m.groups() else m.group(0)).strip()
    return None


def normalize_answer(answer: str) -> str:
    """Lower case, collapsed spaces, no thousands separators / currency / trailing period."""
    text = " ".join(answer.strip().lower().split())
    text = text.replace(",", "").removeprefix("$").rstrip(".")
    return text


def answers_match(predicted: str | None, reference: str) -> bool:
    """Normalized exact match; two numbers match when their values are equal."""
    if predicted is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(reference)
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens (longest common subsequence)."""
    p, r = prediction.lower().split(), reference.lower().split()
    if not p or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in p:
        cur = [0]
        for j, y in enumerate(r, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)
