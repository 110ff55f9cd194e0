"""The Knowledge Tower: retrieval over an index directory, and the context a chat prepends.

``retrieve(query, k)`` ranks chunks by cosine similarity. ``retrieve_text_context(prompt)``
keeps the ranked chunks that clear a similarity threshold (so an unrelated question gets no
context at all) and fit a token budget, and formats them as the block prepended to the user's
message (:func:`augment_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import NexusError
from nexus.knowledge.index import embedder_mismatch_message, read_index_dir

# Cosine similarities of all-MiniLM-L6-v2: a question and the chunk that answers it score
# about 0.4-0.8 on tests/assets/rag; unrelated chunks stay below about 0.2.
DEFAULT_THRESHOLD = 0.3
DEFAULT_K = 4
DEFAULT_CONTEXT_TOKENS = 512
# Sentences of the retrieved chunks kept in the context (0 = whole chunks): see focus_sentences.
DEFAULT_FOCUS = 2
# With focus on and a value above 0, the chat answers ABSTAIN_ANSWER itself when no kept sentence
# is at least this similar to the question: the documents are on the question's topic but do not
# say. Off by default: the similarity an answering sentence reaches depends on the documents (with
# all-MiniLM-L6-v2, 0.71-0.91 on the grounding sets' made-up profiles, 0.39-0.69 on Nexus's own
# docs), so it is set per corpus (docs/pipeline.md, "Declining by similarity").
DEFAULT_DECLINE_BELOW = 0.0
# Retrieval by cosine similarity fused with BM25 (nexus.knowledge.lexical), each ranking this deep.
DEFAULT_HYBRID = False
HYBRID_DEPTH = 20


@dataclass(frozen=True)
class ContextLayout:
    """How retrieved chunks and the question are laid out in the user message.

    ``instruction`` opens the message; each chunk is ``chunk_header`` (``{i}`` its number,
    ``{source}`` its file name) then its text, chunks joined by ``separator``, best first unless
    ``best_last``; ``question_prefix`` then the question close it (or open it, after the
    instruction, when ``question_first``).
    """

    name: str
    instruction: str = ""
    chunk_header: str = "[{i}] (source: {source})\n"
    separator: str = "\n\n"
    question_prefix: str = "Using the documentation above, answer: "
    question_first: bool = False
    best_last: bool = False

    def format_context(self, chunks: Sequence[Retrieved]) -> str:
        if not chunks:
            return ""
        ordered = list(reversed(chunks)) if self.best_last else list(chunks)
        numbered = [(len(chunks) - j if self.best_last else j + 1, c) for j, c in enumerate(ordered)]
        body = self.separator.join(
            self.chunk_header.format(i=i, source=Path(c.source).name) + c.text for i, c in numbered
        )
        return f"{body}\n\n"

    def augment(self, context: str, prompt: str) -> str:
        if not context:
            return prompt
        if self.question_first:
            return f"{self.instruction}{self.question_prefix}{prompt}\n\n{context.rstrip()}"
        return f"{self.instruction}{context}{self.question_prefix}{prompt}"


ABSTAIN_INSTRUCTION = 'If the documents do not hold the answer, say "I don\'t know."\n\n'
# Layouts compared on the development set (benchmarks/bench_grounding.py --compare-layouts; the
# table is in docs/pipeline.md). The first is the one the chat and the grounded training rows use.
LAYOUTS = {
    layout.name: layout
    for layout in (
        ContextLayout(
            "docs-question",
            instruction="Answer the question from these documents. " + ABSTAIN_INSTRUCTION,
            chunk_header="Document {i} ({source}):\n",
            question_prefix="Question: ",
        ),
        ContextLayout("numbered-above"),  # the layout before issue 18
        ContextLayout("plain", chunk_header="", question_prefix="Question: "),
        ContextLayout(
            "instructed-above",
            instruction=ABSTAIN_INSTRUCTION,
        ),
        ContextLayout(
            "question-first",
            instruction="Answer from the documents below. " + ABSTAIN_INSTRUCTION,
            chunk_header="Document {i} ({source}):\n",
            question_prefix="Question: ",
            question_first=True,
        ),
        ContextLayout(
            "best-last",
            instruction="Answer the question from these documents. " + ABSTAIN_INSTRUCTION,
            chunk_header="Document {i} ({source}):\n",
            question_prefix="Question: ",
            best_last=True,
        ),
    )
}
DEFAULT_LAYOUT = next(iter(LAYOUTS.values()))
QUESTION_PREFIX = DEFAULT_LAYOUT.question_prefix


@dataclass(frozen=True)
class Retrieved:
    rank: int  # 1-based
    score: float  # cosine similarity in [-1, 1]
    text: str
    source: str
    position: int  # chunk number within its source document
    row: int  # row in the index


def format_context(chunks: Sequence[Retrieved], layout: ContextLayout | None = None) -> str:
    """The context block for ``chunks`` (empty string for none)."""
    return (layout or DEFAULT_LAYOUT).format_context(chunks)


def augment_prompt(context: str, prompt: str, layout: ContextLayout | None = None) -> str:
    """The user message with the retrieved context (unchanged without context)."""
    return (layout or DEFAULT_LAYOUT).augment(context, prompt)


# A unit ending in one of these (or in a single capital, an initial) goes on into the next one.
_ABBREVIATIONS = frozenset(["dr", "mr", "mrs", "ms", "mt", "st", "prof", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig", "approx"])  # fmt: skip


def _sentences(text: str) -> list[tuple[int, str]]:
    """(start offset, sentence) of ``text``'s sentences, Markdown headings left out: the
    chunker's units, glued back where a unit ends in an abbreviation ("Dr.") or an initial."""
    from nexus.knowledge.chunking import split_units

    out: list[tuple[int, int]] = []
    glue = False
    for a, b in split_units(text):
        if text.startswith("#", a):
            glue = False
            continue
        if glue and out:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
        last = text[a:b].rsplit(None, 1)[-1]
        glue = last.endswith(".") and (
            last[:-1].lower() in _ABBREVIATIONS or (len(last) == 2 and last[0].isupper())
        )
    return [(a, text[a:b]) for a, b in out]


def focus_sentences(
    question: str,
    chunks: Sequence[Retrieved],
    sentences: int,
    embedder,
    titles: Sequence[str],
    hybrid: bool = False,
    names: Sequence[str] = (),
) -> list[Retrieved]:
    """Cut retrieved chunks down to the ``sentences`` sentences most similar to ``question``.

    Each sentence of each chunk (Markdown headings aside) is embedded after its document's title
    (``titles``, one per chunk), as the index embeds chunks, so "It opened in 1874." still says
    whose opening it is. A chunk keeps its chosen sentences in their own order, after its title;
    chunks keep their rank order and one left without a sentence is dropped; a kept chunk's
    ``score`` becomes its best kept sentence's cosine similarity to the question (what the chat's
    ``decline_below`` reads). A small model finds the fact it is asked about far more easily in
    two sentences than in four chunks.

    With ``names`` (what the question names, when every chunk names it: :func:`keep_named`), a
    sentence ranks by that similarity plus the one of the question and the sentence with those
    names and the titles' words masked out of both: every sentence is then about the
    named thing, and what tells them apart is what the question asks of it. Asked "What is Wenser
    best known for?", "Wenser is a fishing village" no longer outranks "The village is best known
    for its smoked mackerel" for holding the name twice.
    """
    import dataclasses

    if sentences < 1 or not chunks:
        return list(chunks)
    candidates = _candidates(chunks)
    if not candidates:
        return list(chunks)
    texts = [f"{titles[i]}: {text}" if titles[i] else text for i, _, text in candidates]
    scores, unnamed = _sentence_scores(question, candidates, titles, names, embedder)
    rank_by = scores + unnamed if names else scores
    order = sorted(range(len(candidates)), key=lambda j: -float(rank_by[j]))
    if hybrid:  # fused with BM25 over the candidate sentences, as retrieve() fuses chunks
        from nexus.knowledge.lexical import BM25, reciprocal_rank_fusion

        order = reciprocal_rank_fusion([order, BM25(texts).top(question, len(texts))])
    best = order[:sentences]
    focused = []
    for i, chunk in enumerate(chunks):
        mine = [j for j in best if candidates[j][0] == i]
        if mine:
            body = " ".join(
                " ".join(candidates[j][2].split()) for j in sorted(mine, key=lambda j: candidates[j][1])
            )
            text = f"{titles[i]}: {body}" if titles[i] else body
            score = max(float(scores[j]) for j in mine)
            focused.append(dataclasses.replace(chunk, rank=len(focused) + 1, text=text, score=score))
    return focused


def _candidates(chunks: Sequence[Retrieved]) -> list[tuple[int, int, str]]:
    """(chunk index, start offset, sentence) of every sentence of ``chunks``; a sentence that
    overlapping chunks repeat is kept once, in the better-ranked chunk."""
    candidates, seen = [], set()
    for i, chunk in enumerate(chunks):
        for a, text in _sentences(chunk.text):
            key = " ".join(text.split())
            if key not in seen:
                seen.add(key)
                candidates.append((i, a, text))
    return candidates


def _sentence_scores(question: str, candidates, titles: Sequence[str], names: Sequence[str], embedder):
    """Cosine similarities to ``question`` of the ``candidates`` sentences, each after its chunk's
    title; and, with ``names``, of the question and the sentences with the names and the titles'
    words masked out (:func:`mask_names`; None without names)."""
    texts = [f"{titles[i]}: {text}" if titles[i] else text for i, _, text in candidates]
    vectors = embedder.embed([*texts, question])  # one call: the question is the last row
    scores = vectors[:-1] @ vectors[-1]
    if not names:
        return scores, None
    vectors = embedder.embed(mask_names([question, *(text for _, _, text in candidates)], [*names, *titles]))
    return scores, vectors[1:] @ vectors[0]


# The peer check (KnowledgeTower.select_context): a document that does not name what the question
# names says more about what it asks than the named one when its best sentence is nearer to the
# whole question than the named document's by more than PEER_TIE (the cosine similarities of two
# sentences of the same form about two made-up names differ by a few hundredths at random), or
# nearer to it with the names masked out by more than PEER_MARGIN. Chosen on the dev and
# dev-domains grounding sets (docs/pipeline.md, "The peer check").
PEER_TIE = 0.03
PEER_MARGIN = 0.2


def peer_says_more(
    question: str, chunks: Sequence[Retrieved], named: Sequence[bool], names: Sequence[str], titles, embedder
) -> Retrieved | None:
    """The chunk of a *peer* (a retrieved document that does not name what ``question`` names, when
    others do: ``named``, one flag per chunk) that says more about what the question asks than
    any named chunk, or None. Asked "Who runs Praeb Hut?" of a Praeb Hut page that names no warden,
    the sentences nearest the question are the other huts' "The warden of ... is": their documents
    hold that kind of fact and the named one does not, so the chat declines rather than let the
    model pass off another sentence of the named page as the answer."""
    if not names or all(named) or not any(named):
        return None
    candidates = _candidates(chunks)
    if not candidates:
        return None
    scores, unnamed = _sentence_scores(question, candidates, titles, names, embedder)
    mine = [j for j, (i, _, _) in enumerate(candidates) if named[i]]
    peers = [j for j, (i, _, _) in enumerate(candidates) if not named[i]]
    if not mine:
        return chunks[candidates[peers[0]][0]]
    for similarity, by in ((scores, PEER_TIE), (unnamed, PEER_MARGIN)):
        best_peer = max(peers, key=lambda j: float(similarity[j]))
        if float(similarity[best_peer]) - max(float(similarity[j]) for j in mine) > by:
            return chunks[candidates[best_peer][0]]
    return None


def mask_names(texts: Sequence[str], names: Sequence[str]) -> list[str]:
    """``texts`` with every word of ``names`` (whole words, any case) taken out; a text left
    empty stays as it was."""
    import re

    words = sorted({w for name in names for w in re.findall(r"\w+", name)}, key=len, reverse=True)
    if not words:
        return list(texts)
    pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, words))})\b", re.IGNORECASE)
    out = []
    for text in texts:
        left = " ".join(pattern.sub(" ", text).split())
        out.append(left if any(ch.isalnum() for ch in left) else text)
    return out


def question_names(
    question: str, knows_word: Callable[[str], bool] | None = None, texts: Sequence[str] = ()
) -> list[str]:
    """The names a question uses: its capitalised words after the first (the first is capitalised
    anyway), each once, in order. "How many books do the Ulwen Reading Rooms hold?" -> Ulwen,
    Reading, Rooms. With ``knows_word`` (the embedder's :meth:`~nexus.knowledge.embedder.Embedder.knows_word`)
    and ``texts`` (the retrieved chunks), also its other words of three letters or more that are
    not common words and that one of ``texts`` holds: a made-up or rare name typed in lower case
    ("how many beds does praeb hut have?" -> praeb). A typo no text holds is no name."""
    import re

    names = list(dict.fromkeys(re.findall(r"\b[A-Z][A-Za-z]+\b", question)[1:]))
    if knows_word is not None and texts:
        have = {n.lower() for n in names}
        for word in re.findall(r"\b[A-Za-z][A-Za-z0-9_]{2,}\b", question):
            if (
                word.lower() not in have
                and not knows_word(word)
                and not names_missing([word], " ".join(texts))
            ):
                names.append(word)
                have.add(word.lower())
    return names


def names_missing(names: Sequence[str], text: str) -> list[str]:
    """Those of ``names`` that ``text`` does not hold as a whole word, in any case ("Ulwen's" holds
    Ulwen, "Ulwenby" does not; "the router" holds the Router a question capitalises)."""
    import re

    return [n for n in names if not re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE)]


def keep_named(names: Sequence[str], chunks: Sequence[Retrieved], texts: Sequence[str]) -> list[Retrieved]:
    """The chunks whose text (``texts``, one per chunk: the chunk with its document's title) names
    every one of ``names`` (:func:`names_missing`), in rank order, renumbered; all of ``chunks``
    when none does (or there are no names). Asked about the Ulwen Reading Rooms, a small model
    copies the number of books of whichever library's chunk sits beside Ulwen's: the others go."""
    import dataclasses

    if not names:
        return list(chunks)
    kept = [c for c, t in zip(chunks, texts, strict=True) if not names_missing(names, t)]
    if not kept:
        return list(chunks)
    return [dataclasses.replace(c, rank=i + 1) for i, c in enumerate(kept)]


class KnowledgeTower:
    """A loaded index plus the embedder it was built with (``KnowledgeTower.load(dir)``)."""

    def __init__(self, directory: Path, index, docs: list[dict], meta: dict, embedder):
        self.directory = directory
        self.index = index
        self.docs = docs
        self.meta = meta
        self.embedder = embedder
        self.threshold = DEFAULT_THRESHOLD
        self.k = DEFAULT_K
        self.max_context_tokens = DEFAULT_CONTEXT_TOKENS
        self.count_tokens: Callable[[Sequence[str]], list[int]] = embedder.count_tokens
        self.last_retrieved: list[Retrieved] = []
        # with match_names: the retrieved peer that says more than the named documents (peer_says_more)
        self.last_peer: Retrieved | None = None
        self.hybrid = DEFAULT_HYBRID
        self._lexical = None

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder=None,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_K,
        max_context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    ) -> KnowledgeTower:
        """Open an index directory. ``embedder`` (a spec string or a loaded
        :class:`~nexus.knowledge.embedder.Embedder`) defaults to the one recorded in the index;
        an embedder other than the recorded one is refused."""
        from nexus.knowledge.embedder import Embedder

        directory = Path(directory)
        index, docs, meta = read_index_dir(directory)
        recorded = meta.get("embedder") or {}
        if embedder is None:
            embedder = Embedder(recorded.get("spec", "default"))
        elif isinstance(embedder, str):
            embedder = Embedder(embedder)
        if not embedder.identity.same_as(recorded):
            raise NexusError(embedder_mismatch_message(directory, recorded, embedder.identity.to_dict()))
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(meta.get("config", {}).get("hnsw_ef_search", 128))
        tower = cls(directory, index, docs, meta, embedder)
        tower.threshold, tower.k, tower.max_context_tokens = threshold, k, max_context_tokens
        return tower

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def lexical(self):
        """BM25 over the chunks (their titles included, as embedded), built on first use."""
        from nexus.knowledge.index import embedding_text
        from nexus.knowledge.lexical import BM25

        if self._lexical is None:
            self._lexical = BM25([embedding_text(entry) for entry in self.docs])
        return self._lexical

    def named_text(self, row: int) -> str:
        """Index row ``row``'s whole chunk after its document's title: the text in which the
        chat looks for the names a question uses."""
        entry = self.docs[row]
        return f"{entry.get('title', '')} {entry['text']}"

    def names_asked(self, question: str, chunks: Sequence[Retrieved]) -> list[str]:
        """:func:`question_names` of ``question`` with the rare words that ``chunks`` (whole, with
        their documents' titles) hold: what the chat treats as the names it asks about."""
        knows_word = getattr(self.embedder, "knows_word", None)
        return question_names(question, knows_word, [self.named_text(c.row) for c in chunks])

    def retrieve(self, query: str, k: int | None = None, *, hybrid: bool | None = None) -> list[Retrieved]:
        """The ``k`` best chunks for ``query``, best first: by cosine similarity, or with ``hybrid``
        (default: ``self.hybrid``) by reciprocal rank fusion of the cosine and BM25 rankings (each
        ``HYBRID_DEPTH`` deep, at least 4k). ``score`` is the cosine similarity either way (the
        threshold's measure)."""
        import numpy as np

        k = self.k if k is None else k
        hybrid = self.hybrid if hybrid is None else hybrid
        if k < 1:
            raise NexusError(f"k must be >= 1, got {k}")
        if not query.strip() or self.index.ntotal == 0:
            return []
        vector = self.embedder.embed([query])  # (1, d)
        depth = min(max(4 * k, HYBRID_DEPTH) if hybrid else k, self.index.ntotal)
        scores, rows = self.index.search(vector, depth)
        cosine = {
            row: score for score, row in zip(scores[0].tolist(), rows[0].tolist(), strict=True) if row >= 0
        }
        order = list(cosine)  # HNSW may return fewer than asked
        if hybrid:
            from nexus.knowledge.lexical import reciprocal_rank_fusion

            order = reciprocal_rank_fusion([order, self.lexical.top(query, depth)])
        results = []
        for row in order[:k]:
            if row not in cosine:  # found by BM25 alone
                cosine[row] = float(np.dot(self.index.reconstruct(int(row)), vector[0]))
            entry = self.docs[row]
            results.append(
                Retrieved(
                    len(results) + 1,
                    float(cosine[row]),
                    entry["text"],
                    entry["source"],
                    entry.get("position", 0),
                    row,
                )
            )
        return results

    def select_context(
        self,
        prompt: str,
        *,
        k: int | None = None,
        max_tokens: int | None = None,
        threshold: float | None = None,
        focus: int = 0,
        hybrid: bool | None = None,
        match_names: bool = False,
    ) -> list[Retrieved]:
        """Chunks above ``threshold`` that fit ``max_tokens`` (in rank order; also kept in
        ``last_retrieved`` for ``/sources``). With ``match_names``, where some of the ``k`` chunks
        name everything the prompt names (:func:`question_names`; a chunk's whole text and its
        document's title count), only those stay (:func:`keep_named`): asked about one library, the
        model then sees no other library's number of books. Where none does, all stay: they are
        about other things than the one it names (the chat declines it, ``decline_unknown_names``).
        Where some do and others do not, ``last_peer`` is set to an other one that says more about
        what the prompt asks (:func:`peer_says_more`; the chat's ``peer_check`` declines then).
        With ``focus`` > 0 the chunks left are then cut to their ``focus`` sentences most similar to
        ``prompt`` (:func:`focus_sentences`; among chunks that all name what the prompt names, with
        those names masked out as well). The budget applies to what is left. ``hybrid`` (default:
        ``self.hybrid``): BM25 fused into the ranking of chunks and of sentences."""
        threshold = self.threshold if threshold is None else threshold
        hybrid = self.hybrid if hybrid is None else hybrid
        budget = self.max_context_tokens if max_tokens is None else max_tokens
        relevant = [c for c in self.retrieve(prompt, k, hybrid=hybrid) if c.score >= threshold]
        named: list[str] = []
        self.last_peer = None
        if match_names and relevant:
            names = self.names_asked(prompt, relevant)
            texts = [self.named_text(c.row) for c in relevant]
            flags = [not names_missing(names, t) for t in texts]
            titles = [self.docs[c.row].get("title", "") for c in relevant]
            self.last_peer = peer_says_more(prompt, relevant, flags, names, titles, self.embedder)
            relevant = keep_named(names, relevant, texts)
            if all(not names_missing(names, self.named_text(c.row)) for c in relevant):
                named = names  # every chunk left names them
        if focus > 0 and relevant:
            titles = [self.docs[c.row].get("title", "") for c in relevant]
            relevant = focus_sentences(prompt, relevant, focus, self.embedder, titles, hybrid, named)
        chosen, used = [], 0
        costs = self.count_tokens([format_context([c]) for c in relevant]) if relevant else []
        for chunk, cost in zip(relevant, costs, strict=True):
            if used + cost > budget:
                break
            chosen.append(chunk)
            used += cost
        self.last_retrieved = chosen
        return chosen

    def retrieve_text_context(
        self,
        prompt: str,
        *,
        k: int | None = None,
        max_tokens: int | None = None,
        threshold: float | None = None,
    ) -> str:
        """The context string to prepend to ``prompt`` ('' when nothing relevant is found)."""
        return format_context(self.select_context(prompt, k=k, max_tokens=max_tokens, threshold=threshold))
