"""Rebuild the two tiny tokenizers of tests/test_cross_tokenizer.py (run from the repository root).

``teacher/``: byte-level BPE, 400 tokens (SmolLM2 style: "Ġ" marks a space);
``student/``: Metaspace BPE, 300 tokens (Gemma / SentencePiece style: "▁" marks a space).
Both are trained on tests/tiny.py's text; they split words differently and spell tokens differently.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tiny  # noqa: E402

HERE = Path(__file__).parent


def build_student(out_dir: Path, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    alphabet = sorted({c for t in tiny._training_text() for c in t.replace(" ", "▁")})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<pad>", "<eos>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(tiny._training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<eos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)
    return fast


if __name__ == "__main__":
    tiny.build_tokenizer(HERE / "teacher", vocab_size=400)
    build_student(HERE / "student")
