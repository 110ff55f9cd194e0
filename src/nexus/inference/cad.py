"""Context-aware decoding (Shi et al., 2023, "Trusting Your Evidence: Hallucinate Less with
Context-aware Decoding"): next-token scores contrasted with the same model's scores without the
retrieved context,

    score = (1 + alpha) * log p(y | context, question) - alpha * log p(y | question),

so tokens the context makes likelier (names, years, commands it holds) gain over what the model
would say anyway. As in contrastive decoding (Li et al., 2023), only tokens within a factor
``plausibility`` of the contextual model's best token stay candidates, so the contrast cannot
promote a token the model finds implausible. It costs a second forward pass per token over the
prompt without its context (KV-cached).

:class:`ContextCopy` is the cheaper nudge towards the context: a copy bias. Where the answer so far
ends with a run of tokens that the retrieved context also holds, the tokens that follow that run there
gain ``bonus`` logits, so a name or number the model has begun to copy is finished as the context
spells it ("Perpetua Tregarthen", not "Perua Tregar"). Like prompt-lookup decoding, it matches the
longest such run (up to ``max_match`` tokens); unlike it, it only biases the model's own choice.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


class ContextContrast(LogitsProcessor):
    """A :class:`LogitsProcessor` for ``model.generate`` on one sequence whose prompt holds the
    context; ``plain_ids`` is the same prompt without it."""

    def __init__(self, model, plain_ids: list[int], prompt_len: int, alpha: float, plausibility: float = 0.1):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.model = model
        self.plain = torch.tensor([plain_ids], device=next(model.parameters()).device)
        self.prompt_len = prompt_len
        self.alpha = alpha
        self.log_plausibility = math.log(plausibility)
        self._past = None
        # transformers renamed forward's `past_key_values` to `cache` (the old name warns until 5.40)
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self._fed = 0  # generated tokens the plain sequence has seen

    def _plain_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_len :]
        if self._past is None:
            feed = torch.cat([self.plain, generated], dim=1)
        else:
            feed = generated[:, self._fed :]
        out = self.model(input_ids=feed, **{self._cache_arg: self._past}, use_cache=True)
        self._past, self._fed = getattr(out, self._cache_arg), generated.shape[1]
        return out.logits[:, -1].float()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ValueError("context-aware decoding runs one sequence at a time")
        with_context = torch.log_softmax(scores.float(), dim=-1)
        without = torch.log_softmax(self._plain_logits(input_ids), dim=-1)
        contrasted = (1 + self.alpha) * with_context - self.alpha * without
        implausible = with_context < with_context.max(dim=-1, keepdim=True).values + self.log_plausibility
        return contrasted.masked_fill(implausible, -math.inf).to(scores.dtype)


class ContextCopy(LogitsProcessor):
    """A :class:`LogitsProcessor` for ``model.generate``: ``bonus`` added to the logits of the
    tokens that follow, in one of the ``sources`` (token sequences: the retrieved chunks), the
    longest suffix (1 to ``max_match`` tokens) of the answer generated after ``prompt_len``."""

    def __init__(self, sources: Sequence[Sequence[int]], prompt_len: int, bonus: float, max_match: int = 8):
        if bonus < 0:
            raise ValueError(f"copy bonus must be >= 0, got {bonus}")
        self.text: list[int] = []  # the sources joined by -1, so no match runs across two of them
        for source in sources:
            self.text += [*source, -1]
        self.prompt_len = prompt_len
        self.bonus = bonus
        self.max_match = max_match
        self.where: dict[int, list[int]] = {}  # token -> its positions that have a successor
        for pos, tok in enumerate(self.text[:-1]):
            if tok >= 0 and self.text[pos + 1] >= 0:
                self.where.setdefault(tok, []).append(pos)

    def continuations(self, generated: list[int]) -> set[int]:
        """Source tokens that follow the longest suffix of ``generated`` the sources hold, less
        those that would repeat a run the answer already has (the bias copies once, never loops)."""
        if not generated:
            return set()
        ends = self.where.get(generated[-1], [])  # positions where a 1-token match ends
        n = 1
        while ends and n < min(self.max_match, len(generated)):
            longer = [e for e in ends if e - n >= 0 and self.text[e - n] == generated[-1 - n]]
            if not longer:
                break
            ends, n = longer, n + 1
        runs = {tuple(generated[i : i + n + 1]) for i in range(len(generated) - n)}
        suffix = tuple(generated[-n:])
        return {t for t in {self.text[e + 1] for e in ends} if (*suffix, t) not in runs}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ValueError("the copy bias runs one sequence at a time")
        nxt = self.continuations(input_ids[0, self.prompt_len :].tolist())
        if not nxt:
            return scores
        scores = scores.clone()
        scores[0, list(nxt)] += self.bonus
        return scores


class NoOpening(LogitsProcessor):
    """A :class:`LogitsProcessor` for ``model.generate``: the answer generated after ``prompt_len``
    may not open with any of ``openings`` (token sequences): the last token of one is banned
    where the answer so far is the rest of it."""

    def __init__(self, openings: Sequence[Sequence[int]], prompt_len: int):
        self.openings = [list(o) for o in openings if o]
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_len :].tolist()
            for opening in self.openings:
                if len(generated) == len(opening) - 1 and generated == opening[:-1]:
                    scores[row, opening[-1]] = float("-inf")
        return scores
