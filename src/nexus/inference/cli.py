"""`nexus chat`: talk to a model in the terminal (also `python scripts/inference.py`)."""

from __future__ import annotations

import argparse

from nexus.inference.session import PENALTY_SCOPES, ChatOptions


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="interactive chat with a model (RAG from its knowledge index; assisted generation)",
        description=(
            "Chat with a model in the terminal. Commands: /reset, /rag on|off, /k N, /focus N, /sources, /cite on|off, /help, /quit; "
            "/image PATH for a vision-language model. "
            "With no --model_path the newest nexus-release-v* in the current directory is used."
        ),
    )
    parser.add_argument("--model_path", "--model-path", "--model", dest="model_path", metavar="SPEC",
                        help="release dir, HF dir, training checkpoint, GGUF file or 'default'")  # fmt: skip
    parser.add_argument("--prompt", help="answer this once and exit")
    parser.add_argument("--image", help="a picture for a vision-language model (in the chat: /image PATH)")
    parser.add_argument(
        "--knowledge", metavar="DIR", help="knowledge index directory (default: the model's own)"
    )
    parser.add_argument("--no-rag", dest="rag", action="store_false", help="start with RAG off")
    parser.add_argument("--k", type=int, default=4, help="chunks to retrieve per question (default 4)")
    parser.add_argument(
        "--threshold", type=float, help="min cosine similarity of a retrieved chunk (default 0.3)"
    )
    parser.add_argument(
        "--cite",
        action="store_true",
        help="append the documents and chunk numbers of the context to each answer",
    )
    parser.add_argument("--focus", type=int, default=ChatOptions.focus, metavar="N",
                        help="keep the N sentences of the retrieved chunks nearest the question "
                        "(default %(default)s; 0 = whole chunks)")  # fmt: skip
    parser.add_argument("--context-tokens", type=int, default=512, help="token budget of retrieved context")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="max tokens per answer (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    parser.add_argument("--repetition-penalty", type=float, default=1.1,
                        help="penalty on tokens already in the conversation (default 1.1; 1 = off)")  # fmt: skip
    parser.add_argument("--penalty-scope", choices=PENALTY_SCOPES, default=ChatOptions.penalty_scope,
                        help="tokens the repetition penalty counts: the whole conversation (retrieved context "
                        "included) or the answer so far (default %(default)s)")  # fmt: skip
    parser.add_argument("--cad", type=float, default=ChatOptions.cad, metavar="ALPHA",
                        help="context-aware decoding: favour what the retrieved context adds, "
                        "(1+ALPHA) log p(.|context) - ALPHA log p(.|no context) (default %(default)s = off)")  # fmt: skip
    parser.add_argument("--decline-below", type=float, default=ChatOptions.decline_below, metavar="S",
                        help="with --focus: answer \"I don't know\" when no retrieved sentence is this similar "
                        "to the question (default %(default)s; 0 = off)")  # fmt: skip
    parser.add_argument("--answer-unknown-names", dest="decline_unknown_names", action="store_false",
                        help="answer even when the question names something no retrieved document mentions "
                        "(by default the chat says it does not know)")  # fmt: skip
    parser.add_argument("--any-chunks", dest="match_names", action="store_false",
                        help="keep every retrieved chunk (by default, where some chunks name everything the "
                        "question names, only those are kept)")  # fmt: skip
    parser.add_argument("--no-kind-check", dest="check_answer_kind", action="store_false",
                        help="answer how-many / in-what-year questions even when no retrieved sentence holds a "
                        "number / year (by default the chat says it does not know)")  # fmt: skip
    parser.add_argument("--no-peer-check", dest="peer_check", action="store_false",
                        help="answer even when a retrieved document that does not name what the question names "
                        "says more about what it asks (by default the chat says it does not know)")  # fmt: skip
    parser.add_argument("--let-model-decline", action="store_true",
                        help="let the model open an answer with a decline even where the retrieved sentences "
                        "hold a word of what is asked (by default only the checks above decline there)")  # fmt: skip
    parser.add_argument("--copy-bias", type=float, default=ChatOptions.copy_bias, metavar="B",
                        help="add B to the logits of the retrieved context's next token where the answer "
                        "has begun to copy it (default %(default)s; 0 = off)")  # fmt: skip
    parser.add_argument("--retrieval", choices=["dense", "hybrid"], default="hybrid" if ChatOptions.hybrid else "dense",
                        help="rank chunks and sentences by cosine similarity, or fused with BM25 (default %(default)s)")  # fmt: skip
    parser.add_argument("--lookup", type=int, default=ChatOptions.lookup_tokens, metavar="N",
                        help="prompt-lookup decoding: draft up to N tokens from the prompt (retrieved context "
                        "included), checked in one pass; same greedy answers (default %(default)s = off)")  # fmt: skip
    parser.add_argument("--system", help="system message")
    parser.add_argument("--teacher", metavar="SPEC", help="teacher model for --assist")
    parser.add_argument(
        "--assist", action="store_true", help="teacher generates, the model drafts (speculative)"
    )
    parser.add_argument("--draft-tokens", type=int, metavar="N",
                        help="with --assist: draft tokens per teacher pass (default: transformers' adaptive length)")  # fmt: skip
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--verbose", dest="chat_verbose", action="store_true",
                        help="print tokens/s (and draft acceptance with --assist) after each answer")  # fmt: skip
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoint"
    )
    parser.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from nexus.config import from_dict
    from nexus.inference.chat import ChatConfig, run_chat

    values = {
        "model_path": args.model_path,
        "prompt": args.prompt,
        "image": args.image,
        "knowledge": args.knowledge,
        "rag": args.rag,
        "k": args.k,
        "threshold": args.threshold,
        "context_tokens": args.context_tokens,
        "focus": args.focus,
        "cite": args.cite,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "penalty_scope": args.penalty_scope,
        "cad": args.cad,
        "copy_bias": args.copy_bias,
        "lookup_tokens": args.lookup,
        "decline_below": args.decline_below,
        "decline_unknown_names": args.decline_unknown_names,
        "match_names": args.match_names,
        "check_answer_kind": args.check_answer_kind,
        "peer_check": args.peer_check,
        "let_model_decline": args.let_model_decline,
        "retrieval": args.retrieval,
        "system": args.system,
        "teacher": args.teacher,
        "assist": args.assist,
        "draft_tokens": args.draft_tokens,
        "dtype": args.dtype,
        "device": args.device,
        "verbose": args.chat_verbose,
        "trust_remote_code": args.trust_remote_code,
    }
    config = from_dict(ChatConfig, values, "command-line options")
    return run_chat(config)
