import math
from types import SimpleNamespace

import pytest
import torch

from nexus.benchmark import scoring
from nexus.benchmark.scoring import LoadedModel


class BigramLM(torch.nn.Module):
    """log p(next | prev) = log_softmax(table[prev]): log-likelihoods computable by hand."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def _lm(model, tokenizer) -> LoadedModel:
    return LoadedModel("teacher", "test", model, tokenizer, torch.device("cpu"), torch.float32, 0)


def _hand_loglik(table, tokenizer, context, continuation):
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    logp = torch.log_softmax(table.double(), -1)
    total = 0.0
    for k in range(len(ctx), len(whole)):
        total += float(logp[whole[k - 1], whole[k]])
    return total, len(whole) - len(ctx)


def test_loglikelihood_matches_hand_computation_in_batches(tiny_tokenizer):
    model = BigramLM(len(tiny_tokenizer))
    requests = [
        ("Question: Why does ice float?\nAnswer:", " It is less dense than water."),
        ("Question: Why does ice float?\nAnswer:", " It is heavy."),
        ("The quick brown fox", " jumps over the lazy dog."),
        ("2 + 2 =", " 4"),
    ]
    # a tiny token budget forces several batches of different padded widths
    results = scoring.loglikelihoods(_lm(model, tiny_tokenizer), requests, max_batch_tokens=24)
    for (ctx, cont), got in zip(requests, results, strict=True):
        expected, n = _hand_loglik(model.table.detach(), tiny_tokenizer, ctx, cont)
        assert got.tokens == n
        assert got.logprob == pytest.approx(expected, abs=1e-4)


def test_trailing_context_space_moves_to_continuation(tiny_tokenizer):
    ctx, cont = scoring.encode_pair(tiny_tokenizer, "Answer: ", "yes")
    ctx2, cont2 = scoring.encode_pair(tiny_tokenizer, "Answer:", " yes")
    assert (ctx, cont) == (ctx2, cont2)


def test_padded_batches_equal_single_sequences_on_a_tiny_llama(tiny_llama_dir, tiny_tokenizer):
    from nexus.models import load_model

    model, _ = load_model(str(tiny_llama_dir))
    lm = _lm(model, tiny_tokenizer)
    requests = [("Explain why the sky looks blue.", " Light scatters."), ("Hi", " there, how are you today?")]
    batched = scoring.loglikelihoods(lm, requests, max_batch_tokens=4096)
    for (ctx, cont), got in zip(requests, batched, strict=True):
        c, k = scoring.encode_pair(tiny_tokenizer, ctx, cont)
        ids = torch.tensor([c + k])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        expected = sum(float(logp[len(c) + j - 1, t]) for j, t in enumerate(k))
        assert got.logprob == pytest.approx(expected, abs=1e-3)


def test_acc_and_acc_norm_follow_lm_eval():
    choices = [" a long but likely answer", " short"]
    # raw sum prefers the short choice; per-character normalization prefers the long one
    assert scoring.choice_predictions([-10.0, -6.0], choices) == (1, 0)
    assert scoring.choice_predictions([-1.0, -6.0], choices) == (0, 0)
    with pytest.raises(ValueError):
        scoring.choice_predictions([-1.0], choices)


def test_answer_extraction_and_matching():
    regexes = [r"####\s*\$?(-?[\d,]*\.?\d+)", r"answer is\s*:?\s*\$?(-?[\d,]*\.?\d+)", r"(-?[\d,]*\.?\d+)"]
    assert scoring.extract_answer("3 + 4 = 7\n#### 7", regexes) == "7"
    assert scoring.extract_answer("so the answer is $1,200.", regexes) == "1,200"
    assert scoring.extract_answer("first 3 then 5 then 12", regexes) == "12"
    assert scoring.extract_answer("no numbers here", regexes) is None
    assert scoring.answers_match("1,200.", "1200")
    assert scoring.answers_match("7.0", "7")
    assert not scoring.answers_match("8", "7")
    assert not scoring.answers_match(None, "7")
    assert scoring.answers_match(" Paris ", "paris")


def test_truncate_at_stop_and_rouge():
    assert (
        scoring.truncate_at_stop("    return x\n\ndef other():", ["\ndef ", "\nclass "]) == "    return x\n"
    )
    assert scoring.rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert scoring.rouge_l_f1("cat the", "the cat") == pytest.approx(0.5)
    assert scoring.rouge_l_f1("", "x") == 0.0


def test_generation_is_greedy_deterministic_and_stops(tiny_llama_dir, tiny_tokenizer):
    from nexus.models import load_model

    model, _ = load_model(str(tiny_llama_dir))
    lm = _lm(model, tiny_tokenizer)
    prompts = ["Why does ice float?", "Write a haiku about snow."]
    a = scoring.generate(lm, prompts, max_new_tokens=12)
    b = scoring.generate(lm, prompts[:1], max_new_tokens=12)
    assert a[0].text == b[0].text  # left padding does not change a row's greedy output
    assert all(0 < g.tokens <= 12 for g in a)
    first_char = a[0].text.strip()[:1]
    if first_char:
        stopped = scoring.generate(lm, prompts[:1], max_new_tokens=12, stop=[first_char])
        assert first_char not in stopped[0].text
    assert math.isfinite(a[0].seconds)
