"""Fast sampling for batched CPU generation.

Transformers' own sampling (``do_sample=True`` with ``top_p``) sorts the whole vocabulary and
draws from it at every step; with a 49k vocabulary and a batch of 64 that is half the time of a
135M model's decode step on a CPU (measured: 180 tok/s sampled vs 376 tok/s greedy). Here the
draw happens inside the top ``k`` logits only, and the processor returns scores where only the
drawn token is finite, so greedy decoding emits it: sampling at greedy speed, from a seeded
generator (reproducible, the global RNG untouched).

``top_k=0`` samples from the whole (tempered) vocabulary, as on-policy distillation must. There
the draw is one uniform number per row against the cumulative distribution: ``torch.multinomial``
draws one exponential variate per vocabulary entry, 7 ms per decoding step for 4 rows of a 49k
vocabulary on a CPU core (measured), more than the forward pass of a 10-layer student.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class TopKSampler(LogitsProcessor):
    """Temperature + top-k + top-p (nucleus within the top k) sampling as a logits processor; use
    it with ``do_sample=False``. ``top_k=0``: the whole vocabulary, tempered (``top_p`` must be 1)."""

    def __init__(
        self,
        temperature: float,
        *,
        top_k: int = 50,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1 or (top_k == 0 and top_p < 1):
            raise ValueError(
                f"bad sampling settings: temperature {temperature}, top_k {top_k}, top_p {top_p}"
            )
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.top_k == 0:
            return self._whole_vocabulary(scores)
        values, index = scores.float().topk(min(self.top_k, scores.shape[-1]), dim=-1)  # sorted
        probs = (values / self.temperature).softmax(-1)
        if self.top_p < 1:
            outside = probs.cumsum(-1) - probs > self.top_p  # the most likely token always stays
            probs = probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(-1, index.gather(-1, choice), 0.0)

    def _whole_vocabulary(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        cdf = (scores.float() / self.temperature).softmax(-1).cumsum(-1)
        u = torch.rand((scores.shape[0], 1), generator=self.generator, device=scores.device, dtype=cdf.dtype)
        total = cdf[:, -1:].contiguous()
        # the first token whose cumulative probability exceeds u x total: a zero-probability token
        # is never chosen (its cumulative value equals its predecessor's), and should rounding put
        # u x total at the total, the last token with any probability is
        choice = torch.minimum(torch.searchsorted(cdf, u * total, right=True), torch.searchsorted(cdf, total))
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(-1, choice, 0.0)
