"""Chat session: history, commands, RAG injection, context-window fitting, streaming, assisted
generation, auto-loading and the CLI (piped stdin, --prompt, errors) with a tiny random model."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny as tiny_models

from nexus.errors import NexusError
from nexus.inference import NO_RELEASE, ChatOptions, ChatSession, QuitChat, find_newest_release
from nexus.inference.chat import chat_loop
from nexus.knowledge.tower import Retrieved
from nexus.models import load_model, load_tokenizer

RAG = Path(__file__).parent / "assets" / "rag"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, resolved = load_model(str(tiny_llama_dir))
    return model, load_tokenizer(resolved)


class FakeTower:
    """A tower with one fixed chunk (retrieval itself is tested in test_knowledge_index.py)."""

    def __init__(self, text: str, score: float = 0.9):
        self.chunk = Retrieved(1, score, text, "facts.md", 0, 0)
        self.count_tokens = None
        self.calls = 0

    def __len__(self):
        return 1

    def select_context(self, prompt, *, k=None, max_tokens=None, focus=0, hybrid=None, match_names=False):
        self.calls += 1
        self.match_names = match_names
        return [self.chunk]


def test_turns_keep_history_and_stream(tiny):
    model, tok = tiny
    session = ChatSession(model, tok, options=ChatOptions(max_new_tokens=6))
    pieces: list[str] = []
    first = session.respond("Hello there", on_text=pieces.append)
    assert 0 < first.new_tokens <= 6 and first.tokens_per_second > 0
    assert "".join(pieces).strip() == first.text
    ids, _, _ = session.build_input("And again")
    rendered = tok.decode(ids)
    assert rendered.count("<|im_start|>user") == 2 and "Hello there" in rendered and "And again" in rendered
    session.respond("And again")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.command("/reset") == "conversation reset" and session.history == []


def test_rag_context_is_prepended_and_can_be_turned_off(tiny):
    model, tok = tiny
    tower = FakeTower("The capital of Veloria is Quendrath.")
    session = ChatSession(model, tok, tower=tower, options=ChatOptions(max_new_tokens=3))
    ids, chunks, _ = session.build_input("What is the capital of Veloria?")
    assert "The capital of Veloria is Quendrath." in tok.decode(ids) and chunks == [tower.chunk]
    assert tower.match_names is True  # the chat keeps the chunks naming what the question names
    session.respond("What is the capital of Veloria?")
    assert session.history[0]["content"] == "What is the capital of Veloria?"  # history stays plain
    assert "facts.md" in session.command("/sources")
    assert session.command("/rag off").startswith("RAG off")
    ids, chunks, _ = session.build_input("What is the capital of Veloria?")
    assert "Quendrath" not in tok.decode(ids) and chunks == []
    assert session.command("/k 2") == "k = 2" and session.options.k == 2


def test_commands_reject_bad_input(tiny):
    model, tok = tiny
    session = ChatSession(model, tok)
    with pytest.raises(QuitChat):
        session.command("/quit")
    for bad in ("/k zero", "/k 0", "/rag maybe", "/nope"):
        with pytest.raises(NexusError):
            session.command(bad)
    with pytest.raises(NexusError, match="no knowledge index"):
        session.command("/rag on")
    assert session.command("/sources").startswith("no context")
    with pytest.raises(NexusError, match="empty message"):
        session.respond("   ")


def test_context_window_cuts_context_first_then_refuses(tiny):
    model, tok = tiny
    tower = FakeTower("Veloria facts. " * 120)  # far more than the tiny model's 512-token window
    session = ChatSession(model, tok, tower=tower, options=ChatOptions(max_new_tokens=4))
    ids, chunks, notices = session.build_input("What is the capital?")
    assert chunks == [] and len(ids) <= 512 - 4
    assert notices == ["retrieved context truncated to fit the context window"]
    with pytest.raises(NexusError, match=r"the message is \d+ tokens but the context window allows 508"):
        session.build_input("word " * 600)


def test_assisted_generation_with_itself_accepts_every_draft_and_matches_greedy(tiny):
    model, tok = tiny
    plain = ChatSession(model, tok, options=ChatOptions(max_new_tokens=12))
    draft = copy.deepcopy(model)  # the same weights as a separate draft model
    assisted = ChatSession(model, tok, assistant=draft, options=ChatOptions(max_new_tokens=12))
    a = plain.respond("Tell me a story")
    b = assisted.respond("Tell me a story")
    assert b.text == a.text  # assisted greedy decoding returns the target's greedy answer
    assert b.drafted and b.acceptance_rate == 1.0
    assert "draft acceptance 100%" in b.stats_line()


@pytest.fixture(scope="module")
def small_draft(tiny_tokenizer):
    """A 2-layer random model with the tiny tokenizer: a draft that is often wrong."""
    return tiny_models.build_model("llama", tiny_tokenizer, num_layers=2, seed=7)


@pytest.mark.parametrize("draft_tokens", [None, 1, 3])
@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_assisted_generation_returns_the_teachers_greedy_tokens(tiny, small_draft, draft_tokens, penalty):
    model, tok = tiny
    options = {"max_new_tokens": 16, "repetition_penalty": penalty}
    plain = ChatSession(model, tok, options=ChatOptions(**options))
    assisted = ChatSession(
        model, tok, assistant=small_draft, draft_tokenizer=tok,
        options=ChatOptions(**options, draft_tokens=draft_tokens),
    )  # fmt: skip
    saved = small_draft.generation_config.num_assistant_tokens
    for prompt in ("Tell me a story", "def add(a, b):"):
        ids, _, _ = plain.build_input(prompt)
        want, _, _, _ = plain.generate(ids)
        got, _, drafted, accepted = assisted.generate(ids)
        assert got == want  # the draft model changes the speed, never the answer
        assert drafted >= 1 and 0 <= accepted <= drafted
    assert small_draft.generation_config.num_assistant_tokens == saved  # draft length set per call only


def test_assisted_generation_refuses_another_tokenizer(tiny, small_draft, tmp_path):
    model, tok = tiny
    other = tiny_models.build_tokenizer(tmp_path, vocab_size=300)
    with pytest.raises(NexusError, match="--assist needs the draft model to use the teacher's tokenizer"):
        ChatSession(model, tok, assistant=small_draft, draft_tokenizer=other)
    with pytest.raises(ValueError, match="draft_tokens must be >= 1"):
        ChatOptions(draft_tokens=0)


def test_chat_loop_survives_errors_and_reads_pipes(tiny):
    model, tok = tiny
    session = ChatSession(model, tok, options=ChatOptions(max_new_tokens=3))
    stdin = io.StringIO("hello\n/k nope\n\n/help\nsecond turn\n/quit\nnever read\n")
    out, info = io.StringIO(), io.StringIO()
    assert chat_loop(session, stdin=stdin, out=out, info=info) == 0
    assert "error: usage: /k N" in info.getvalue()
    assert "commands:" in out.getvalue()
    assert len(session.history) == 4  # two answered turns, "never read" was not


def test_newest_release_is_picked(tmp_path):
    assert find_newest_release(tmp_path) is None
    for name in ("nexus-release-v1", "nexus-release-v10", "nexus-release-v2", "nexus-release-vx"):
        (tmp_path / name).mkdir()
    assert find_newest_release(tmp_path).name == "nexus-release-v10"


def _chat(*args, cwd=None, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "nexus", "chat", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=stdin,
        timeout=120,
    )


def test_cli_prompt_pipe_checkpoint_and_errors(tiny_llama_dir, tmp_path):
    # A Nexus training checkpoint folder (weights in model/) loads and says so.
    checkpoint = tmp_path / "checkpoints" / "checkpoint-5"
    shutil.copytree(tiny_llama_dir, checkpoint / "model")
    once = _chat("--model_path", str(checkpoint), "--prompt", "hi", "--max-new-tokens", "4", "--verbose")
    assert once.returncode == 0, once.stderr
    assert "loaded Nexus training checkpoint" in once.stderr and "tokens/s" in once.stderr
    piped = _chat("--model_path", str(tiny_llama_dir), "--max-new-tokens", "3", stdin="one\n/rag on\ntwo\n")
    assert piped.returncode == 0, piped.stderr
    assert "error: no knowledge index loaded" in piped.stderr
    assert "loaded Hugging Face checkpoint" in piped.stderr and len(piped.stdout.strip().splitlines()) >= 1
    none = _chat(cwd=tmp_path)
    assert none.returncode == 2 and none.stderr.strip() == f"nexus: error: {NO_RELEASE}"
    (tmp_path / "junk").mkdir()
    bad = _chat("--model_path", str(tmp_path / "junk"))
    assert bad.returncode == 2 and "not a model directory" in bad.stderr and "Traceback" not in bad.stderr
    wrapper = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "scripts" / "inference.py"), "--assist"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrapper.returncode == 2 and "--assist needs --teacher" in wrapper.stderr
    lone = _chat("--model_path", str(tiny_llama_dir), "--draft-tokens", "3", "--prompt", "hi")
    assert lone.returncode == 2 and lone.stderr.strip().endswith("--draft-tokens is used with --assist")


def test_cli_assist_answers_as_the_teacher_and_refuses_another_tokenizer(
    tiny_llama_dir, tiny_tokenizer, small_draft, tmp_path
):
    draft = tiny_models.save_model(small_draft, tiny_tokenizer, tmp_path / "draft")
    common = ("--prompt", "Tell me a story", "--max-new-tokens", "12")
    alone = _chat("--model_path", str(tiny_llama_dir), *common)
    assisted = _chat(
        "--model_path", str(draft), "--teacher", str(tiny_llama_dir), "--assist", "--draft-tokens", "3",
        "--verbose", *common,
    )  # fmt: skip
    assert alone.returncode == 0 and assisted.returncode == 0, assisted.stderr
    assert assisted.stdout == alone.stdout and "draft acceptance" in assisted.stderr
    assert "as the draft model (assisted generation)" in assisted.stderr
    other_tok = tiny_models.build_tokenizer(tmp_path / "other-tok", vocab_size=300)
    other = tiny_models.save_model(
        tiny_models.build_model("llama", other_tok, num_layers=2), other_tok, tmp_path / "other"
    )
    bad = _chat("--model_path", str(other), "--teacher", str(tiny_llama_dir), "--assist", *common)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("nexus: error: ")
    assert "vocabulary" in bad.stderr.strip().splitlines()[-1]


def test_newest_release_and_its_knowledge_index_are_found(tiny_llama_dir, tmp_path):
    from nexus.inference import resolve_chat_model
    from nexus.inference.loading import knowledge_dir_for
    from nexus.knowledge import INDEX_FILE
    from nexus.models import resolve_model

    release = tmp_path / "nexus-release-v1"
    shutil.copytree(tiny_llama_dir, release)
    (release / "nexus_manifest.json").write_text("{}")
    spec = resolve_chat_model(None, tmp_path)
    assert spec == str(release)
    resolved = resolve_model(spec)
    assert resolved.kind == "release" and knowledge_dir_for(resolved) is None
    (release / INDEX_FILE).write_bytes(b"")
    assert knowledge_dir_for(resolved) == release
    assert resolve_chat_model("default", tmp_path) == "default"


def test_repetition_penalty_reaches_generation_and_is_validated(tiny):
    import torch

    model, tok = tiny
    prompt = tok("the the the the", return_tensors="pt").input_ids[0].tolist()
    outs = {}
    for penalty in (1.0, 5.0):
        session = ChatSession(model, tok, options=ChatOptions(max_new_tokens=10, repetition_penalty=penalty))
        outs[penalty] = session.generate(prompt)[0]
        eos = session._eos_ids()
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=10, do_sample=False, repetition_penalty=penalty, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        assert outs[penalty] == ref[0, len(prompt) :].tolist()
    assert outs[1.0] != outs[5.0], "a strong penalty must change a greedy answer of a repetitive prompt"
    with pytest.raises(ValueError, match="repetition_penalty"):
        ChatOptions(repetition_penalty=0)


def test_cite_appends_the_context_documents_and_chunk_numbers(tiny):
    model, tok = tiny
    tower = FakeTower("The capital of Veloria is Quendrath.")
    tower.chunk = Retrieved(1, 0.9, tower.chunk.text, "docs/facts.md", 3, 7)
    session = ChatSession(model, tok, tower=tower, options=ChatOptions(max_new_tokens=3))
    plain = session.respond("What is the capital of Veloria?")
    assert "[sources:" not in plain.text
    assert session.command("/cite on") == "citations on"
    pieces: list[str] = []
    cited = session.respond("What is the capital of Veloria?", on_text=pieces.append)
    assert cited.text.endswith("[sources: facts.md chunk 3]")
    assert "".join(pieces).strip() == cited.text  # the streamed text carries it too
    assert "[sources:" not in session.history[-1]["content"]  # the history keeps the answer alone
    session.command("/rag off")
    assert "[sources:" not in session.respond("Hello").text  # no context, nothing to cite
    with pytest.raises(NexusError):
        session.command("/cite maybe")


def test_context_layout_is_chosen_by_name(tiny):
    from nexus.knowledge.tower import DEFAULT_LAYOUT, LAYOUTS

    model, tok = tiny
    tower = FakeTower("The capital of Veloria is Quendrath.")
    second = Retrieved(2, 0.5, "Veloria exports tin.", "trade.md", 1, 1)
    tower.select_context = lambda prompt, **_: [tower.chunk, second]  # two chunks: order shows
    texts = {}
    for name, layout in LAYOUTS.items():
        session = ChatSession(model, tok, tower=tower, options=ChatOptions(layout=name))
        texts[name] = tok.decode(session.build_input("What is the capital of Veloria?")[0])
        assert layout.question_prefix + "What is the capital of Veloria?" in texts[name]
        assert "Quendrath" in texts[name]
    assert len(set(texts.values())) == len(LAYOUTS)  # each layout is a different prompt
    assert ChatOptions().layout == DEFAULT_LAYOUT.name
    with pytest.raises(ValueError, match="layout"):
        ChatOptions(layout="nope")


def test_context_aware_decoding_matches_a_naive_reference(tiny):
    """--cad: each greedy token maximises (1 + a) log p(.|context) - a log p(.|no context) among the
    tokens within 10x of the contextual best, recomputed here with full forwards (no KV cache)."""
    import math

    import torch

    model, tok = tiny
    alpha, steps = 1.5, 8
    tower = FakeTower("The capital of Veloria is Quendrath, founded in 1823 by Ada Lorn.")
    options = ChatOptions(max_new_tokens=steps, repetition_penalty=1.0, cad=alpha, copy_bias=0)
    session = ChatSession(model, tok, tower=tower, options=options)
    question = "Who founded Quendrath?"
    with_context, _, _ = session.build_input(question)
    without = session._encode([{"role": "user", "content": question}])
    assert len(without) < len(with_context)
    got = session.respond(question)

    eos = set(session._eos_ids())
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            ctx = torch.log_softmax(model(torch.tensor([with_context + expected])).logits[0, -1].float(), -1)
            plain = torch.log_softmax(model(torch.tensor([without + expected])).logits[0, -1].float(), -1)
            scores = ((1 + alpha) * ctx - alpha * plain).masked_fill(
                ctx < ctx.max() + math.log(0.1), -math.inf
            )
            expected.append(int(scores.argmax()))
            if expected[-1] in eos:
                break
    assert got.new_tokens == len(expected)
    assert tok.decode(expected, skip_special_tokens=True).strip() == got.text


def test_context_aware_decoding_is_validated(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="cad must be >= 0"):
        ChatOptions(cad=-1)
    with pytest.raises(NexusError, match="do not combine"):
        ChatSession(model, tok, assistant=model, options=ChatOptions(cad=1.0))
    # Without retrieved context there is nothing to contrast: plain greedy decoding.
    plain = ChatSession(model, tok, options=ChatOptions(max_new_tokens=5, cad=2.0)).respond("Hello")
    assert plain.text == ChatSession(model, tok, options=ChatOptions(max_new_tokens=5)).respond("Hello").text


def test_copy_bias_continuations():
    """The source tokens that follow the longest suffix of the answer the sources hold (up to
    max_match); no match runs across two sources."""
    from nexus.inference.cad import ContextCopy

    copy_ = ContextCopy([[5, 1, 2, 3, 9, 1, 2, 4, 7]], prompt_len=0, bonus=3.0)
    assert copy_.continuations([1]) == {2}
    assert copy_.continuations([8, 1, 2]) == {3, 4}  # "1 2" twice: both continuations
    assert copy_.continuations([9, 1, 2]) == {4}  # "9 1 2" once: the longer match decides
    assert copy_.continuations([6]) == set() and copy_.continuations([]) == set()
    assert copy_.continuations([1, 2, 3, 8, 1, 2]) == {4}  # "1 2 3" was copied once: not again
    assert copy_.continuations([1, 2, 4, 1, 2]) == {3}
    assert ContextCopy([[5, 1, 2, 3, 9, 1, 2, 4]], 0, 1.0, max_match=1).continuations([9, 1, 2]) == {3, 4}
    two = ContextCopy([[5, 1], [2, 3]], 0, 1.0)
    assert two.continuations([1]) == set() and two.continuations([5, 1, 2]) == {3}
    with pytest.raises(ValueError, match="copy bonus"):
        ContextCopy([[1, 2]], 0, bonus=-1.0)


def test_no_opening_bans_only_the_answers_opening():
    import torch

    from nexus.inference.cad import NoOpening

    ban = NoOpening([[4, 5], [7]], prompt_len=2)
    prompt = [1, 1]
    first = ban(torch.tensor([prompt]), torch.zeros(1, 9))  # the answer's first token: 7 is banned
    assert first[0, 7] == float("-inf") and torch.isfinite(first[0, [4, 5]]).all()
    second = ban(torch.tensor([[*prompt, 4]]), torch.zeros(1, 9))  # after 4, 5 is banned
    assert second[0, 5] == float("-inf") and torch.isfinite(second[0, 7])
    later = ban(torch.tensor([[*prompt, 3, 4]]), torch.zeros(1, 9))  # not the opening: free
    assert torch.isfinite(later).all()


def test_copy_bias_matches_a_naive_reference(tiny):
    """--copy-bias B: each greedy token maximises the logits plus B on every token that follows, in
    a retrieved chunk, the longest suffix of the answer found there (full forwards here); a huge
    bias makes the answer copy a source on once it has begun one."""
    import torch

    model, tok = tiny
    fact = "The capital of Veloria is Quendrath, founded in 1823 by Ada Lorn."
    tower = FakeTower(fact)
    chunk = tok(fact, add_special_tokens=False)["input_ids"]
    question = "Who founded Quendrath?"
    steps = 8
    for bonus in (2.0, 1e4):
        options = ChatOptions(max_new_tokens=steps, repetition_penalty=1.0, copy_bias=bonus)
        session = ChatSession(model, tok, tower=tower, options=options)
        prompt, _, _ = session.build_input(question)
        got = session.respond(question)
        eos = set(session._eos_ids())
        expected: list[int] = []
        with torch.no_grad():
            for _ in range(steps):
                scores = model(torch.tensor([prompt + expected])).logits[0, -1].float()
                for n in range(min(8, len(expected)), 0, -1):
                    tail = expected[-n:]
                    nxt = {chunk[i + n] for i in range(len(chunk) - n) if chunk[i : i + n] == tail}
                    if nxt:  # never towards a run of n + 1 tokens the answer already holds
                        had = {tuple(expected[i : i + n + 1]) for i in range(len(expected) - n)}
                        nxt = {t for t in nxt if (*tail, t) not in had}
                        scores[list(nxt)] += bonus
                        break
                expected.append(int(scores.argmax()))
                if expected[-1] in eos:
                    break
        assert got.new_tokens == len(expected)
        assert tok.decode(expected, skip_special_tokens=True).strip() == got.text
    # A huge bias copies a source on from the answer's first token: here a source that begins with
    # the token greedy decoding starts with (this random model's answers show no chunk token).
    first = session.generate(prompt)[0][0]
    tail = [t for t in dict.fromkeys(chunk) if t != first][:4]
    new = session.generate(prompt, copy_sources=[[first, *tail]])[0]
    assert new[:5] == [first, *tail]
    # no retrieved context: nothing to copy from, plain greedy decoding
    plain = ChatSession(model, tok, options=ChatOptions(max_new_tokens=5, copy_bias=1e4)).respond("Hello")
    assert plain.text == ChatSession(model, tok, options=ChatOptions(max_new_tokens=5)).respond("Hello").text
    with pytest.raises(ValueError, match="copy_bias must be >= 0"):
        ChatOptions(copy_bias=-1)


def test_a_name_no_retrieved_document_mentions_is_declined(tiny):
    """A question naming something (a capitalised word after its first) that no retrieved chunk
    mentions gets the trained "I don't know" without generating; names the chunks hold, a question
    without names, no retrieved context, or the option off: the model answers."""
    from nexus.data.grounded import ABSTAIN_ANSWER

    model, tok = tiny
    tower = FakeTower("The capital of Veloria is Quendrath, founded in 1823 by Ada Lorn.")
    options = ChatOptions(max_new_tokens=4)
    result = ChatSession(model, tok, tower=tower, options=options).respond("Who founded Ostrava in Veloria?")
    assert result.text == ABSTAIN_ANSWER and result.new_tokens == 0
    assert result.notices[-1] == "declined without generating: the retrieved documents never name Ostrava"
    for question in ("Who founded Quendrath in Veloria?", "who founded it?", "Ada Lorn founded what?"):
        assert ChatSession(model, tok, tower=tower, options=options).respond(question).new_tokens > 0
    assert ChatSession(model, tok, options=options).respond("Who founded Ostrava?").new_tokens > 0
    off = ChatOptions(max_new_tokens=4, decline_unknown_names=False)
    assert ChatSession(model, tok, tower=tower, options=off).respond("Who founded Ostrava?").new_tokens > 0


def test_a_number_or_a_year_no_sentence_holds_is_declined(tiny):
    """A how-many / in-what-year question whose retrieved sentences hold no number / year gets the
    trained "I don't know" without generating; with one there, or the check off, the model answers."""
    from nexus.data.grounded import ABSTAIN_ANSWER

    model, tok = tiny
    options = ChatOptions(max_new_tokens=4)
    plain = FakeTower("Veloria is a fishing village. Its harbour master is Ada Lorn.")
    for question in ("How many people live in Veloria?", "In what year was Veloria founded?"):
        result = ChatSession(model, tok, tower=plain, options=options).respond(question)
        assert result.text == ABSTAIN_ANSWER and result.new_tokens == 0
        assert "no retrieved sentence holds one" in result.notices[-1]
    dated = FakeTower("Veloria was founded in 1823. About 400 people live there.")
    for question in ("How many people live in Veloria?", "In what year was Veloria founded?"):
        assert ChatSession(model, tok, tower=dated, options=options).respond(question).new_tokens > 0
    assert (
        ChatSession(model, tok, tower=plain, options=options).respond("Who is the harbour master?").new_tokens
        > 0
    )
    off = ChatOptions(max_new_tokens=4, check_answer_kind=False)
    assert (
        ChatSession(model, tok, tower=plain, options=off).respond("How many people live there?").new_tokens
        > 0
    )


def test_a_peer_saying_more_is_declined(tiny):
    """When the tower found a retrieved document that does not name what the question names but
    says more about what it asks (``last_peer``), the chat declines without generating; with the
    check off it answers."""
    from nexus.data.grounded import ABSTAIN_ANSWER

    model, tok = tiny
    tower = FakeTower("Molvarn Hut sleeps 18 walkers.")
    tower.last_peer = Retrieved(2, 0.8, "The warden of Karnel Hut is Agnes Pell.", "docs/karnel.md", 0, 1)
    result = ChatSession(model, tok, tower=tower, options=ChatOptions(max_new_tokens=4)).respond(
        "Who is the warden of Molvarn Hut?"
    )
    assert result.text == ABSTAIN_ANSWER and result.new_tokens == 0
    assert result.notices[-1] == (
        "declined without generating: karnel.md says more about what is asked than the documents naming Molvarn, Hut"
    )
    off = ChatOptions(max_new_tokens=4, peer_check=False)
    assert (
        ChatSession(model, tok, tower=tower, options=off)
        .respond("Who is the warden of Molvarn Hut?")
        .new_tokens
    )


def test_the_model_may_not_open_with_a_decline_where_the_context_mentions_what_is_asked(tiny, monkeypatch):
    """Where the kept chunks name what the question names and hold a word of what it asks, the answer
    may not open with a decline (DECLINE_OPENINGS); elsewhere, or with let_model_decline, it may."""
    from nexus.data.grounded import DECLINE_OPENINGS

    model, tok = tiny

    class NamedTower(FakeTower):
        docs = [{"title": "Yarockgra Provisions"}]

        def named_text(self, row):
            return "Yarockgra Provisions " + self.chunk.text

    seen = []
    real = ChatSession.generate

    def spy(self, ids, on_text=None, plain=None, sources=None, banned=None):
        seen.append(banned)
        return real(self, ids, on_text, plain, sources, banned)

    monkeypatch.setattr(ChatSession, "generate", spy)
    tower = NamedTower("Yarockgra Provisions: It employs 35 people.")
    options = ChatOptions(max_new_tokens=3)
    ChatSession(model, tok, tower=tower, options=options).respond(
        "How many people work at Yarockgra Provisions?"
    )
    assert seen[-1] == tok(list(DECLINE_OPENINGS), add_special_tokens=False)["input_ids"]
    ChatSession(model, tok, tower=tower, options=options).respond("Which family owns Yarockgra Provisions?")
    assert seen[-1] is None  # "family", "owns": the sentence holds neither
    free = ChatOptions(max_new_tokens=3, let_model_decline=True)
    ChatSession(model, tok, tower=tower, options=free).respond(
        "How many people work at Yarockgra Provisions?"
    )
    assert seen[-1] is None


def test_prompt_lookup_keeps_the_greedy_answer(tiny):
    """--lookup N drafts from the prompt and verifies in one pass: the greedy tokens are the same as
    without it, with the repetition penalty and the copy bias on; it refuses --cad and --assist."""
    model, tok = tiny
    tower = FakeTower("The capital of Veloria is Quendrath, founded in 1823 by Ada Lorn.")
    answers = {}
    for lookup in (0, 3, 10):
        options = ChatOptions(max_new_tokens=12, lookup_tokens=lookup, repetition_penalty=1.3)
        session = ChatSession(model, tok, tower=tower, options=options)
        prompt, _, _ = session.build_input("Who founded Quendrath?")
        answers[lookup] = session.generate(prompt, copy_sources=[tok(tower.chunk.text)["input_ids"]])[0]
    assert answers[3] == answers[0] and answers[10] == answers[0] and len(answers[0]) > 1
    with pytest.raises(ValueError, match="do not combine"):
        ChatOptions(lookup_tokens=3, cad=1.0)
    with pytest.raises(NexusError, match="do not combine"):
        ChatSession(model, tok, assistant=model, options=ChatOptions(lookup_tokens=3))
    with pytest.raises(ValueError, match="lookup_tokens"):
        ChatOptions(lookup_tokens=-1)


def test_decline_below_answers_i_dont_know_when_no_sentence_is_close(tiny):
    """With focus on, retrieved context whose best sentence scores below decline_below gets the
    trained "I don't know" answer without generating (and says why); above it, or with whole
    chunks, or with the gate off, the model answers; no retrieved context, no gate."""
    from nexus.data.grounded import ABSTAIN_ANSWER

    model, tok = tiny
    weak = FakeTower("Quendrath has a harbour.", score=0.5)
    streamed: list[str] = []
    gated = ChatOptions(max_new_tokens=5, decline_below=0.7)
    result = ChatSession(model, tok, tower=weak, options=gated).respond(
        "Who founded Quendrath?", on_text=streamed.append
    )
    assert result.text == ABSTAIN_ANSWER and "".join(streamed) == ABSTAIN_ANSWER
    assert result.new_tokens == 0 and result.retrieved and "0.50 < 0.7" in result.notices[-1]
    assert ChatOptions().decline_below == 0  # off by default: the scale depends on the documents
    for options in (ChatOptions(max_new_tokens=5), ChatOptions(max_new_tokens=5, decline_below=0.7, focus=0)):
        answered = ChatSession(model, tok, tower=weak, options=options).respond("Who founded Quendrath?")
        assert answered.new_tokens > 0 and not answered.notices
    strong = FakeTower("Quendrath was founded by Ada Lorn.", score=0.9)
    assert ChatSession(model, tok, tower=strong, options=gated).respond("Who?").new_tokens > 0
    assert ChatSession(model, tok, options=gated).respond("Hello").new_tokens > 0
    with pytest.raises(ValueError, match="decline_below"):
        ChatOptions(decline_below=1.5)


def test_answer_scoped_penalty_leaves_the_prompt_unpenalized(tiny):
    """penalty_scope="answer": only tokens the answer already holds are penalized (naive reference),
    so copying from the retrieved context costs nothing; "conversation" penalizes the prompt too."""
    import torch

    model, tok = tiny
    penalty, steps = 5.0, 10
    with torch.no_grad():
        # a prompt that ends in the model's own unpenalized greedy continuation holds the tokens it
        # would say next, so penalizing the prompt must change the answer
        start = tok("hello", return_tensors="pt").input_ids
        prompt = model.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=12, do_sample=False,
                                pad_token_id=tok.pad_token_id)[0].tolist()  # fmt: skip
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            scores = model(torch.tensor([prompt + expected])).logits[0, -1].float()
            for t in set(expected):
                scores[t] = scores[t] / penalty if scores[t] > 0 else scores[t] * penalty
            expected.append(int(scores.argmax()))
    outs = {}
    for scope in ("answer", "conversation"):
        options = ChatOptions(max_new_tokens=steps, repetition_penalty=penalty, penalty_scope=scope)
        session = ChatSession(model, tok, options=options)
        eos = set(session._eos_ids())
        outs[scope] = session.generate(prompt)[0]
    cut = next((i + 1 for i, t in enumerate(expected) if t in eos), steps)
    assert outs["answer"] == expected[:cut]
    assert outs["answer"] != outs["conversation"], "penalizing the prompt's tokens must change this answer"
    with pytest.raises(ValueError, match="penalty_scope"):
        ChatOptions(penalty_scope="prompt")


def test_chat_focus_option_and_command(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="focus must be >= 0"):
        ChatOptions(focus=-1)
    session = ChatSession(model, tok, options=ChatOptions(focus=2))
    assert session.command("/focus 0") == "focus = 0 (whole chunks)" and session.options.focus == 0
    assert session.command("/focus 3") == "focus = 3 sentences" and session.options.focus == 3
    for bad in ("/focus", "/focus -1", "/focus two"):
        with pytest.raises(NexusError, match="usage: /focus N"):
            session.command(bad)
