"""Chat speed: student vs teacher tokens/s, and assisted generation (teacher verifies, a
depth-pruned student drafts): speedup, draft acceptance rate, and whether the answers stay
the teacher's.

    .venv/bin/nexus models prune default /tmp/s10 --keep 0,3,6,9,12,15,18,21,24,27
    .venv/bin/python benchmarks/bench_chat.py --student /tmp/s10 [--teacher default] [--prompts 6] [--max-new-tokens 64]

Greedy decoding, one conversation per prompt (prompts: nexus.data.builtin.CHAT_PROMPTS),
float32 unless --dtype bfloat16. tokens/s = new tokens / generate() wall time, summed over prompts.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(model, tokenizer, prompts, max_new_tokens, assistant=None):
    from nexus.inference import ChatOptions, ChatSession

    texts, tokens, seconds, drafted, accepted = [], 0, 0.0, 0, 0
    for prompt in prompts:
        session = ChatSession(
            model, tokenizer, assistant=assistant, options=ChatOptions(max_new_tokens=max_new_tokens)
        )
        result = session.respond(prompt)
        texts.append(result.text)
        tokens += result.new_tokens
        seconds += result.seconds
        drafted += result.drafted or 0
        accepted += result.accepted or 0
    return texts, tokens, seconds, drafted, accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student model spec (the draft model)")
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    from nexus.data.builtin import CHAT_PROMPTS
    from nexus.inference import load_chat_model

    prompts = list(CHAT_PROMPTS[: args.prompts])
    teacher, tokenizer, t_resolved = load_chat_model(args.teacher, dtype=args.dtype)
    student, s_tokenizer, s_resolved = load_chat_model(args.student, dtype=args.dtype)
    print(
        f"threads {torch.get_num_threads()}, dtype {args.dtype}, {len(prompts)} prompts, max {args.max_new_tokens} new tokens"
    )
    print(f"teacher: {t_resolved.describe()} ({teacher.config.num_hidden_layers} layers)")
    print(f"student: {s_resolved.describe()} ({student.config.num_hidden_layers} layers)")
    run(teacher, tokenizer, prompts[:1], 8)  # warm-up
    t_texts, t_tokens, t_seconds, _, _ = run(teacher, tokenizer, prompts, args.max_new_tokens)
    s_texts, s_tokens, s_seconds, _, _ = run(student, s_tokenizer, prompts, args.max_new_tokens)
    a_texts, a_tokens, a_seconds, drafted, accepted = run(
        teacher, tokenizer, prompts, args.max_new_tokens, assistant=student
    )
    t_rate, s_rate, a_rate = t_tokens / t_seconds, s_tokens / s_seconds, a_tokens / a_seconds
    same = sum(a == t for a, t in zip(a_texts, t_texts, strict=True))
    print(f"teacher alone : {t_rate:6.1f} tokens/s ({t_tokens} tokens, {t_seconds:.1f} s)")
    print(
        f"student alone : {s_rate:6.1f} tokens/s ({s_tokens} tokens, {s_seconds:.1f} s) = {s_rate / t_rate:.2f}x teacher"
    )
    print(
        f"teacher+draft : {a_rate:6.1f} tokens/s ({a_tokens} tokens, {a_seconds:.1f} s) = {a_rate / t_rate:.2f}x teacher; "
        f"draft acceptance {accepted / max(drafted, 1):.0%} ({accepted}/{drafted}); "
        f"answers identical to the teacher's: {same}/{len(prompts)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
