"""Context-aware decoding (Shi et al., 2023, "Trusting Your Evidence: Hallucinate Less with
Context-aware Decoding"): next-token scores contrasted with the same model's scores without the
retrieved context,

    score = (1 + alpha) * log p(y | context, question) - alpha * log p(y | question),

so tokens the context makes likelier (names, years, commands it holds) gain over what the model
would say anyway. As in contrastive decoding (Li et al., 2023), only tokens within a factor
``plausibility`` of the contextual model's best token stay candidates, so the contrast cannot
promote a token the model finds implausible. It costs a second forward pass per token over the
prompt without its context (KV-cached).
"""

from __future__ import annotations

import inspect
import math

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
