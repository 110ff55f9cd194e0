"""Tiny random Hugging Face models and a tiny real BPE tokenizer for offline tests.

The tokenizer is trained here (byte-level BPE, ~400 tokens) and carries a ChatML chat
template like SmolLM2's, so chat rendering, masking and generation run as with real models.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> list[str]:
    from nexus.data.builtin import CHAT_PROMPTS, arithmetic_word_problems, python_source_snippets

    texts = list(CHAT_PROMPTS)
    texts += [f"{e.prompt}\n{e.response}" for e in arithmetic_word_problems(200)]
    texts += [e.text for e in python_source_snippets(40)]
    texts += ["The quick brown fox jumps over the lazy dog. 0123456789 +-*/=()[]{}#:"] * 5
    return texts


def build_tokenizer(out_dir: str | Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_model(
    family: str,
    tokenizer,
    *,
    num_layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    tie: bool = True,
):
    """A random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``MistralForCausalLM`` in float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_domain_mix(path: str | Path) -> Path:
    """36 tagged instruction rows (12 math, 12 code, 12 untagged chat) as JSONL, for phases 3-4."""
    import json

    rows = [
        {"prompt": f"Add {i} and {i + 1}.", "response": f"{i} + {i + 1} = {2 * i + 1}", "domain": "math"}
        for i in range(12)
    ]
    rows += [
        {"prompt": f"Write f{i}.", "response": f"def f{i}(x):\n    return x * {i}", "domain": "code"}
        for i in range(12)
    ]
    rows += [{"prompt": f"Greet person {i}.", "response": f"Hello, friend number {i}!"} for i in range(12)]
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tower(docs: str | Path, out: str | Path):
    """A knowledge index of the Markdown files in ``docs`` (default embedder, default settings),
    written to ``out`` and loaded."""
    from nexus.knowledge import IndexConfig, KnowledgeTower, build_index
    from nexus.knowledge.embedder import Embedder

    embedder = Embedder("default")
    build_index([Path(docs)], Path(out), IndexConfig(), embedder=embedder)
    return KnowledgeTower.load(out, embedder=embedder)
