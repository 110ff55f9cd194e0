"""On-policy distillation batches: the student samples completions, the teacher scores them.

A fraction ``lmbda`` of the optimizer steps (GKD, Agarwal et al. 2024; TRL's ``GKDTrainer`` /
``DistillationTrainer``) trains on sequences the student wrote itself instead of the corpus
rows: the student generates a completion for each prompt (batched, KV-cached ``generate`` in
eval mode), the prompt + completion becomes a packed-format batch whose ``loss_mask`` holds only
the generated tokens, and the step's loss is the usual one (KD from the live teacher on those
positions, anchoring, CE if its weight is set). Training on its own samples is what removes the
train/inference mismatch of off-policy KD: the teacher corrects the student where the student
actually goes.

Everything that decides an on-policy step is a pure function of ``(seed, step)``:

* whether step ``s`` is on-policy: a uniform draw of ``numpy.random.default_rng((seed, s, 7))``
  below ``lmbda`` (per optimizer step, so the global batch has one kind and its token count is
  the loss normalizer of one big batch);
* its prompts: a seeded permutation of the prompt list, like the data order;
* the sampling RNG: a ``torch.Generator`` seeded with ``(seed, step, rank, micro-batch)``, so the
  global RNG stream (and ``lmbda = 0``) is untouched.

So a resumed run samples exactly what an uninterrupted one would: there is no extra RNG state
to checkpoint.

The prompts come from the training rows themselves (never the held-out ones): in each packed
document, everything up to the chat template's assistant header (the last one) for chat rows,
the unscored prefix for rows packed with ``loss_on: response``, and the first
``prompt_tokens`` tokens (at most half the document) of plain text.

Speed: under bf16 the student's float32 master weights would be cast to bf16 by autocast at
every decoding step (a full pass over the weights per generated token, which on a CPU costs more
than the decode itself); a bf16 copy of the student, refreshed once per on-policy step, decodes
instead. In float32 the student itself generates. The draw from the whole vocabulary is
:class:`nexus.inference.sampling.TopKSampler` with ``top_k=0`` (one uniform number per row, where
transformers' ``multinomial`` draws one per vocabulary entry).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nexus.data.packing import IGNORE_INDEX, PackedRows
from nexus.errors import NexusError
from nexus.hardware import autocast
from nexus.trainer.step import global_batch_rows

_DECIDE_STREAM = 7  # numpy seed-sequence word of the on-policy draw
_PROMPT_SEED = 0x0F1C  # offset of the prompt order's seed from the data order's


@dataclass
class OnPolicySettings:
    lmbda: float  # fraction of optimizer steps trained on the student's own completions
    max_new_tokens: int
    temperature: float  # sampling temperature (0 = greedy)
    seed: int


def generation_header(tokenizer) -> list[int] | None:
    """Token ids the chat template puts before an assistant turn (``<|im_start|>assistant\\n``),
    or None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    turn = [{"role": "user", "content": "x"}]
    plain = tokenizer.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
    asking = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    if not asking.startswith(plain) or asking == plain:
        return None
    ids = tokenizer(asking[len(plain) :], add_special_tokens=False)["input_ids"]
    return list(ids) or None


def _last_occurrence(ids: np.ndarray, pattern: list[int]) -> int | None:
    """End index (exclusive) of the last occurrence of ``pattern`` in ``ids``."""
    n = len(pattern)
    if n == 0 or len(ids) < n:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    hits = np.flatnonzero((windows == np.asarray(pattern, dtype=ids.dtype)).all(axis=1))
    return int(hits[-1]) + n if hits.size else None


def prompts_from_rows(
    rows: PackedRows, tokenizer, *, prompt_tokens: int, max_prompt_len: int
) -> list[np.ndarray]:
    """One prompt per packed document of ``rows`` (see the module docstring), cut from the left
    to ``max_prompt_len`` tokens; documents with nothing scored (row padding) give none."""
    header = generation_header(tokenizer)
    prompts: list[np.ndarray] = []
    for r in range(len(rows)):
        ids = np.asarray(rows.input_ids[r])
        pos = np.asarray(rows.position_ids[r])
        labels = np.asarray(rows.labels[r])
        starts = [*np.flatnonzero(pos == 0).tolist(), len(ids)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            doc, scored = ids[a:b], np.flatnonzero(labels[a:b] != IGNORE_INDEX)
            if scored.size == 0 or len(doc) < 2:
                continue
            end = _last_occurrence(doc, header) if header else None
            if end is None and scored[0] > 0:
                end = int(scored[0]) + 1  # loss_on=response: the prompt is what is not scored
            if end is None:
                end = max(1, min(prompt_tokens, len(doc) // 2))  # plain text: a prefix
            prompts.append(doc[max(0, end - max_prompt_len) : end].astype(np.int64))
    if not prompts:
        raise NexusError("on-policy distillation found no prompts in the training rows")
    return prompts


def is_onpolicy_step(step: int, settings: OnPolicySettings) -> bool:
    """Whether optimizer step ``step`` (0-based) trains on the student's own completions."""
    if settings.lmbda <= 0.0:
        return False
    draw = np.random.default_rng((settings.seed, step, _DECIDE_STREAM)).random()
    return bool(draw < settings.lmbda)


def _seed_of(*words: int) -> int:
    seq = np.random.SeedSequence(list(words))
    return int(seq.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


class OnPolicyBatches:
    """Builds the on-policy batches of a run (see the module docstring)."""

    def __init__(
        self,
        prompts: Sequence[np.ndarray],
        settings: OnPolicySettings,
        *,
        pad_id: int,
        eos_ids: list[int],
        precision: str,
    ):
        if not 0.0 <= settings.lmbda <= 1.0:
            raise NexusError(f"lmbda must be in [0, 1], got {settings.lmbda}")
        if not prompts:
            raise NexusError("on-policy distillation needs at least one prompt")
        self.prompts = list(prompts)
        self.settings = settings
        self.pad_id = pad_id
        self.eos_ids = list(eos_ids)
        self.precision = precision
        # Benchmarks set this to max_new_tokens to time completions of a fixed length (EOS held back).
        self.min_new_tokens = 0
        self._shadow: nn.Module | None = None

    def is_onpolicy(self, step: int) -> bool:
        return is_onpolicy_step(step, self.settings)

    def count_onpolicy(self, steps: int) -> int:
        return sum(self.is_onpolicy(s) for s in range(steps))

    def step_prompts(self, step: int, global_batch: int) -> np.ndarray:
        """Prompt indices of on-policy step ``step``: a fresh seeded permutation each epoch."""
        return global_batch_rows(step, global_batch, len(self.prompts), self.settings.seed + _PROMPT_SEED)

    # -- generation -------------------------------------------------------------------------
    def _generator(self, student: nn.Module) -> nn.Module:
        """The module that decodes: the student (fp32) or its bf16 copy, refreshed now."""
        if self.precision != "bf16":
            return student
        if self._shadow is None:
            shadow = copy.deepcopy(student)
            for m in shadow.modules():  # no anchoring capture, no gradient checkpointing hooks
                m._forward_hooks.clear()
                m._forward_pre_hooks.clear()
            self._shadow = shadow.to(torch.bfloat16).eval().requires_grad_(False)
        with torch.no_grad():
            src = dict(student.named_parameters())
            for name, p in self._shadow.named_parameters():
                p.copy_(src[name])
            src_buffers = dict(student.named_buffers())
            for name, b in self._shadow.named_buffers():
                if name in src_buffers and b.is_floating_point():
                    b.copy_(src_buffers[name])
        return self._shadow

    @torch.no_grad()
    def generate(
        self, student: nn.Module, prompt_ids: np.ndarray, *, device: torch.device, seed_words: tuple[int, ...]
    ) -> list[np.ndarray]:
        """Completions (each ending at its first EOS, or at ``max_new_tokens``) of the prompts
        ``prompt_ids`` (indices into the prompt list), sampled by ``student``."""
        from transformers import GenerationConfig, LogitsProcessorList

        from nexus.inference.sampling import TopKSampler

        s = self.settings
        prompts = [self.prompts[int(i)] for i in prompt_ids]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where decoding starts
            ids[i, width - len(p) :] = torch.from_numpy(p)
            mask[i, width - len(p) :] = 1
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=False,  # sampling, if any, is the processor's draw, which greedy then emits
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            use_cache=True,
        )
        processors = LogitsProcessorList()
        if s.temperature > 0:  # the whole tempered distribution, from a seeded generator
            generator = torch.Generator(device=device).manual_seed(_seed_of(s.seed, *seed_words))
            processors.append(TopKSampler(s.temperature, top_k=0, generator=generator))
        model = self._generator(student)
        was_training = model.training
        model.eval()
        try:
            ctx = autocast(self.precision, device) if model is student else contextlib.nullcontext()
            with ctx:
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    logits_processor=processors,
                )
        finally:
            model.train(was_training)
        completions = out[:, width:].cpu().numpy()
        result = []
        for row in completions:
            eos = np.flatnonzero(np.isin(row, self.eos_ids))
            result.append(row[: int(eos[0]) + 1] if eos.size else row)
        return result

    def batch(self, prompt_ids: np.ndarray, completions: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Prompt + completion rows in the packed batch format; only completion tokens are scored."""
        prompts = [self.prompts[int(i)] for i in prompt_ids]
        width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
        n = len(prompts)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        pos = np.zeros((n, width), dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            seq = np.concatenate([p, c])
            ids[i, : len(seq)] = seq
            pos[i, : len(seq)] = np.arange(len(seq))
            pos[i, len(seq) :] = np.arange(width - len(seq))  # padding is its own document
            # position t predicts token t + 1: the generated tokens are p .. len(seq) - 1
            labels[i, len(p) - 1 : len(seq) - 1] = seq[len(p) :]
        labels_t = torch.from_numpy(labels)
        return {
            "input_ids": torch.from_numpy(ids),
            "position_ids": torch.from_numpy(pos),
            "labels": labels_t,
            "loss_mask": labels_t != IGNORE_INDEX,
        }
