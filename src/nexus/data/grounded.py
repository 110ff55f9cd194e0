"""Retrieval-grounded question answering, generated offline: teach the student to answer from
the context that the chat's RAG prepends. (Slightly over 500 lines: three row families that share
one layout and one name generator.)

A small teacher does not use retrieved documentation: given the chunk that answers a question, the
135M default teacher still invents an answer. Distillation copies that habit. This module builds
training rows in the same layout as a RAG chat turn (the chat's own
:func:`~nexus.knowledge.tower.format_context` and :func:`~nexus.knowledge.tower.augment_prompt`),
so the recovery phase (phase 3) can teach the student to find the chunk that answers the question
and answer from it, and to say it does not know when no chunk does. ``builtin:rag=N`` draws half
the rows from made-up profiles (:func:`fact_qa_examples`: who / when / how many / what / how-to
questions, a fifth of them unanswerable) and a quarter from each of:

* **Made-up user guides** (:func:`guide_qa_examples`): sections of a guide for an invented
  command-line tool, one to three how-tos each ("To rotate the logs, run `zorvik rotate`."). The
  question names the task, the answer is that sentence, and the other retrieved chunks are
  other sections of the same guide and of another tool's guide.
* **The Python standard library's API reference** on this machine (:func:`api_qa_examples`):
  each public function, method or class with a docstring is an entry, a heading with its
  signature and then the docstring. "Return the absolute path." gives "How do I get the absolute
  path?" (answer: "To get the absolute path, call `os.path.abspath(path)`."), and a question can
  also ask what a function does. A docstring sentence "To X, Y." gives "How do I X?". The other
  chunks are entries of the same module first, as retrieval would rank them. Half the entries
  are written as a user guide would write them, so the answer is often a sentence to find and copy.

The answering chunk's place among the others is random. None of this text is the project's own
documentation, and Nexus's own tasks are not in the guides' word lists, so questions about Nexus
stay a held-out test of the skill (``benchmarks/bench_grounding.py``). Deterministic given ``seed``.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from nexus.data.formats import Example
from nexus.knowledge.tower import DEFAULT_FOCUS

MAX_ENTRY_CHARS = 600  # one context chunk: about 150 model tokens
MAX_CONTEXT_CHARS = 1500  # all chunks together: the row stays well inside 512 tokens

# Imperative first words of docstrings that read as a task ("Copy a file." -> "copy a file").
_TASK_VERBS = frozenset(
    """accept acquire add append apply bind build calculate call cancel change check clear close
    compare compile compute connect convert copy create decode delete disable download emit enable
    encode escape execute extract fetch find flush format generate handle import initialize insert
    install join kill list load lock log make move normalize open parse print process quote read
    receive register release remove rename replace reset run save schedule search send set sort
    split start stop terminate test translate unquote unregister update upload validate wait walk
    write""".split()  # noqa: SIM905 (a word list reads best as words)
)
_SENTENCE = re.compile(r"^(.+?\.)(?:\s|$)", re.S)
_HOWTO = re.compile(r"(?:^|(?<=[.!?]\s))To ([a-z][\w ,'`\-]{4,70}?), ([a-z][^.]{10,200}\.)")
_CLEAN = re.compile(r"^[\w ,'`\-()/]+$")


@dataclass(frozen=True)
class Entry:
    module: str  # file stem, e.g. "shutil"
    name: str  # qualified name, e.g. "shutil.copytree" or "zipfile.ZipFile.open"
    signature: str  # "copytree(src, dst, symlinks=False)"
    doc: str  # the docstring, cleaned and cut to MAX_ENTRY_CHARS

    @property
    def call(self) -> str:
        """The qualified signature: ``shutil.copytree(src, dst, symlinks=False)``."""
        return f"{self.name.rsplit('.', 1)[0]}.{self.signature}"

    @property
    def text(self) -> str:
        return f"### `{self.call}`\n\n{self.doc}"

    @property
    def howto_text(self) -> str:
        """The entry written as a how-to ("To get X, call `f()`." then the rest of the docstring),
        as user guides are; the reference form (:attr:`text`) when the docstring names no task."""
        sentence = _first_sentence(self.doc)
        task = _task(sentence) if sentence else None
        if task is None:
            return self.text
        rest = self.doc.strip()[len(sentence) :].strip() if self.doc.strip().startswith(sentence) else ""
        return f"### `{self.call}`\n\nTo {task[0]}, call `{self.call}`. {rest}".rstrip()


def _cut(doc: str, limit: int = MAX_ENTRY_CHARS) -> str:
    """``doc`` cut at the last paragraph (or sentence) end before ``limit`` characters."""
    if len(doc) <= limit:
        return doc
    head = doc[:limit]
    for sep in ("\n\n", ". "):
        at = head.rfind(sep)
        if at > limit // 3:
            return head[: at + (1 if sep == ". " else 0)].rstrip()
    return head.rsplit(" ", 1)[0]


def _entries(path: Path) -> list[Entry]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = path.stem
    found: list[Entry] = []

    def visit(nodes, prefix: str, in_class: bool) -> None:
        for node in nodes:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            doc = (ast.get_docstring(node) or "").strip()
            if isinstance(node, ast.ClassDef):
                init = next(
                    (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
                )
                args = ast.unparse(init.args).removeprefix("self").lstrip(", ") if init else ""
                if doc:
                    found.append(Entry(module, f"{prefix}{node.name}", f"{node.name}({args})", _cut(doc)))
                visit(node.body, f"{prefix}{node.name}.", True)
            elif doc:
                args = ast.unparse(node.args)
                if in_class:
                    args = re.sub(r"^(self|cls)(, )?", "", args)
                found.append(Entry(module, f"{prefix}{node.name}", f"{node.name}({args})", _cut(doc)))

    visit(tree.body, f"{module}.", False)
    return found


def stdlib_entries(root: str | Path | None = None) -> list[Entry]:
    """Documented public functions, methods and classes of the standard library's top-level
    modules (tests and private modules skipped), in a stable order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    entries: list[Entry] = []
    for path in files:
        entries += _entries(path)
    return entries


def _third_person(verb: str) -> str:
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    return verb + "s"


def _task(sentence: str) -> tuple[str, str] | None:
    """(task phrase, verb in third person) of an imperative first sentence, or None.

    "Return True if the path exists." -> ("check if the path exists", "returns");
    "Return the file size." -> ("get the file size", "returns"); "Copy data." -> ("copy data", "copies").
    """
    words = sentence.rstrip(".").split()
    if not 3 <= len(words) <= 16 or not _CLEAN.match(sentence.rstrip(".")):
        return None
    verb, rest = words[0].lower(), words[1:]
    verb = {"returns": "return", "gets": "get", "creates": "create"}.get(verb, verb)
    if verb == "return":
        if rest[0].lower() in ("true", "a", "an", "the", "whether") and "if" in rest[:3]:
            phrase = "check " + " ".join(rest[rest.index("if") :])
        elif rest[0] == "whether":
            phrase = "check " + " ".join(rest)
        else:
            phrase = "get " + " ".join(rest)
        return phrase, "returns"
    if verb in _TASK_VERBS:
        return " ".join([verb, *rest]), _third_person(verb)
    return None


def _first_sentence(doc: str) -> str | None:
    match = _SENTENCE.match(doc.strip())
    if not match:
        return None
    sentence = " ".join(match.group(1).split())
    return sentence if len(sentence) <= 140 else None


def _questions(entry: Entry) -> list[tuple[str, str]]:
    """(question, answer) pairs that ``entry`` answers."""
    pairs = []
    sentence = _first_sentence(entry.doc)
    task = _task(sentence) if sentence else None
    if task:
        phrase, verb3 = task
        pairs.append((f"How do I {phrase}?", f"To {phrase}, call `{entry.call}`."))
        rest = sentence.rstrip(".").split(" ", 1)[1]
        pairs.append((f"What does `{entry.name}` do?", f"`{entry.name}` {verb3} {rest}."))
    for how, what in _HOWTO.findall(" ".join(entry.doc.split())):
        if _CLEAN.match(how):
            pairs.append((f"How do I {how}?", f"To {how}, {what}"))
    return pairs


# Sentences each row's context keeps (0 = whole chunks): the chat's default, so rows look like
# the chat's turns.
FOCUS = DEFAULT_FOCUS


@functools.cache
def _embedder():
    from nexus.knowledge.embedder import Embedder

    return Embedder("default")


def _rag_example(
    source: str, chunks: list[tuple[str, str]], question: str, answer: str, key: str | None = None
) -> Example:
    """One chat example in the chat's RAG layout: the ``(text, file name)`` chunks, then the
    question. The chunks are cut to their ``FOCUS`` sentences nearest the question as the chat
    cuts retrieved ones (:func:`~nexus.knowledge.tower.focus_sentences`, with the chat's
    embedder); when that drops ``key`` (the fact the answer gives), the context no longer holds
    the answer and the row answers ABSTAIN_ANSWER, as the chat should then."""
    from nexus.knowledge.index import document_title
    from nexus.knowledge.tower import Retrieved, augment_prompt, focus_sentences, format_context

    retrieved = [Retrieved(rank, 0.0, text, name, 0, 0) for rank, (text, name) in enumerate(chunks, 1)]
    if FOCUS:
        titles = [document_title(c.text) for c in retrieved]
        retrieved = focus_sentences(question, retrieved, FOCUS, _embedder(), titles)
        if key is not None and not any(key in c.text for c in retrieved):
            answer = ABSTAIN_ANSWER
    prompt = augment_prompt(format_context(retrieved), question)
    # gold: the answer itself is the target (the teacher does not read its context this well)
    return Example("chat", source, "chat", prompt=prompt, response=answer, extra={"gold": True})


def api_qa_examples(n: int, seed: int = 0, root: str | Path | None = None) -> list[Example]:
    """``n`` RAG-layout examples on the standard library's API reference (see the module docstring)."""
    entries = stdlib_entries(root)
    by_module: dict[str, list[Entry]] = {}
    for entry in entries:
        by_module.setdefault(entry.module, []).append(entry)
    candidates = [(e, q, a) for e in entries for q, a in _questions(e)]
    if not candidates:
        return []
    rng = random.Random(seed)
    rng.shuffle(candidates)
    examples = []
    for i, (entry, question, answer) in enumerate(candidates[:n]):
        same = [e for e in by_module[entry.module] if e is not entry]
        distractors = rng.sample(same, min(len(same), rng.randint(0, 2)))
        distractors += rng.sample(entries, rng.randint(0, 2))
        chunks = [e for e in distractors if e is not entry][:3]
        chunks.insert(rng.randint(0, len(chunks)), entry)
        # Half the entries read as how-to prose, so the answer to "How do I X?" is often a
        # sentence "To X, ..." of the context to find and copy (as in a user guide), and the
        # prose form alone does not give the answering entry away.
        texts = [c.howto_text if rng.random() < 0.5 else c.text for c in chunks]
        while sum(map(len, texts)) > MAX_CONTEXT_CHARS and len(chunks) > 1:
            drop = max(i for i, c in enumerate(chunks) if c is not entry)
            del chunks[drop], texts[drop]
        named = [(text, f"{c.module}.md") for c, text in zip(chunks, texts, strict=True)]
        examples.append(_rag_example(f"builtin:rag:{seed}:{i}", named, question, answer))
    return examples


# ---------------------------------------------------------------------------- user guides
# Generated how-to sections of user guides for made-up command-line tools: the answers are
# sentences of the guide ("To rotate the logs, run `zorvik rotate`."), the questions name the
# task. The made-up names keep the model from answering from memory. Nexus's own tasks
# (pausing, resuming, stopping, tests, indexes, status) are not in these lists, so questions
# about Nexus stay held out.
_SYLLABLES = ["ka", "zo", "rin", "vel", "tor", "mi", "qua", "bex", "lun", "dra", "fen", "sol", "pix", "gar", "nov", "yel", "tum", "ish"]  # fmt: skip
_TASKS = [
    ("rotate", "the logs"), ("back up", "the database"), ("archive", "old reports"),
    ("export", "the results"), ("import", "a dataset"), ("deploy", "the site"),
    ("rebuild", "the cache"), ("clean", "temporary files"), ("list", "the workers"),
    ("restore", "a snapshot"), ("encrypt", "the vault"), ("verify", "a download"),
    ("upgrade", "the schema"), ("rename", "a project"), ("publish", "a release"),
    ("preview", "the changes"), ("limit", "the bandwidth"), ("mount", "a remote folder"),
    ("merge", "two branches"), ("sign", "a package"), ("compress", "the assets"),
    ("schedule", "a nightly job"), ("inspect", "the queue"), ("migrate", "the settings"),
    ("prune", "unused images"), ("mirror", "a repository"), ("tag", "a build"),
    ("lint", "the configuration"), ("throttle", "the uploads"), ("share", "a workspace"),
]  # fmt: skip
_DIRS = ["state", "cache", "conf", "var", "run", "data", "hooks"]
_EXTS = ["flag", "lock", "toml", "yaml", "json"]
_LONG_FLAGS = ["dry-run", "force", "verbose", "all", "keep", "watch", "no-cache", "parallel"]


def _tool_name(rng: random.Random) -> str:
    return "".join(rng.sample(_SYLLABLES, rng.randint(2, 3)))


def _instruction(rng: random.Random, tool: str, verb: str, obj: str) -> str:
    """One way to do a task, as a guide would write it (commands, flags, files, keys)."""
    sub = verb.split()[0]
    word = obj.split()[-1]
    path = f"{rng.choice(_DIRS)}/{sub}.{rng.choice(_EXTS)}"
    choices = [
        f"run `{tool} {sub} {word}`",
        f"run `{tool} {sub}` with `--{rng.choice(_LONG_FLAGS)}`",
        f"create the file `{path}`, for example with `{tool} {sub}` or `touch {path}`",
        f"set `{sub}_{word}: true` in `{tool}.yaml` and run `{tool} apply`",
        f"press `{sub[0]}` in the terminal that runs `{tool}`",
        f"delete `{path}` with `{tool} {sub} --reset` or `rm {path}`",
        f"pass `--{sub}-{word}` to `{tool} run`",
    ]
    return rng.choice(choices)


_FOLLOW_UPS = [
    "The change takes effect at the next {unit} boundary.",
    "{Tool} prints one line when it is done.",
    "This takes about {n} seconds for a small project.",
    "Nothing else is changed, and the command can be run again safely.",
    "The old files are moved aside, never deleted.",
    "Time spent waiting does not count in the totals.",
]


def guide_sections(rng: random.Random, tool: str, n: int = 6) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections of a made-up tool's guide covering ``n`` tasks, one to three tasks per section
    under a heading that need not name them: ``[(markdown text, [(question, answer), ...])]``."""
    tasks = rng.sample(_TASKS, n)
    sections = []
    while tasks:
        size = rng.randint(1, 3)
        group, tasks = tasks[:size], tasks[size:]
        paragraphs, pairs = [], []
        for verb, obj in group:
            task = f"{verb} {obj}"
            answer = f"To {task}, {_instruction(rng, tool, verb, obj)}."
            follow = rng.choice(_FOLLOW_UPS).format(
                unit=rng.choice(["step", "batch", "minute"]), Tool=tool.capitalize(), n=rng.randint(2, 90)
            )
            paragraphs.append(f"{answer} {follow}")
            pairs.append((f"How do I {task}?", answer))
        if rng.random() < 0.3:
            paragraphs.append(f"```bash\n{tool} {group[0][0].split()[0]} --help\n```")
        verb, obj = group[0]
        title = rng.choice(
            [f"{verb.capitalize()} {obj}", f"Working with {obj}", "Common tasks", "Maintenance"]
        )
        sections.append((f"## {title}\n\n" + "\n\n".join(paragraphs), pairs))
    return sections


def guide_qa_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` RAG-layout examples on made-up user guides (see :func:`guide_sections`)."""
    rng = random.Random(seed)
    examples: list[Example] = []
    while len(examples) < n:
        tool = _tool_name(rng)
        sections = guide_sections(rng, tool)
        other = guide_sections(rng, _tool_name(rng), 3)
        for text, pairs in sections:
            for question, answer in pairs:
                if len(examples) >= n:
                    break
                asked = answer.split(",")[0] + ","  # "To rotate the logs,": no other answer to it
                pool = [(s, f"{tool}.md") for s, _ in sections if s != text]
                pool += [(s, "README.md") for s, _ in other if asked not in s]
                chunks = rng.sample(pool, min(len(pool), rng.randint(0, 3)))
                chunks.insert(rng.randint(0, len(chunks)), (text, f"{tool}.md"))
                source = f"builtin:rag-guide:{seed}:{len(examples)}"
                examples.append(_rag_example(source, chunks, question, answer, key=answer))
    return examples


def grounded_qa_examples(n: int, seed: int = 0, root: str | Path | None = None) -> list[Example]:
    """``n`` RAG-layout chat examples, interleaved: half on made-up profiles (who / when / how many /
    what / how-to, a fifth of them unanswerable), a quarter on made-up user guides, a quarter on the
    standard library's API reference."""
    facts = fact_qa_examples(n - n // 2, seed)
    guides = guide_qa_examples(n // 4, seed)
    api = api_qa_examples(n // 2 - len(guides), seed, root)
    api += guide_qa_examples(n // 2 - len(guides) - len(api), seed + 1)  # no stdlib: more guides
    how_to = [ex for pair in zip(api, guides, strict=False) for ex in pair]
    how_to += api[len(guides) :] + guides[len(api) :]
    mixed = [ex for pair in zip(facts, how_to, strict=False) for ex in pair]
    return mixed + facts[len(how_to) :] + how_to[len(facts) :]


# ---------------------------------------------------------------------------- made-up facts
# Short profiles of invented clubs, festivals, farms, labs, bands and ferry lines: who founded
# each, when, how many (members, stalls, ...), what it is known for, and how to do something there.
# Questions of five types (who / when / how many / what / how-to), each with several phrasings, are
# answered with the fact in a short sentence; a question whose answer the context does not hold
# (the profile leaves that fact out, or the entity is not in the context) is answered with
# ABSTAIN_ANSWER. The other chunks are profiles of the same kind, so the answer has to come from
# the right one. The names are built from their own syllables and first names: the held-out
# evaluation (nexus.benchmark.grounding_sets) uses other syllables, names and kinds of entities
# (villages, libraries, shops), and tests/test_data_grounded.py checks that no name is shared.

ABSTAIN_ANSWER = "I don't know. The documents do not say."
_ABSTAIN_MARKERS = ("don't know", "do not know", "not say", "does not say", "not mention", "no information")
# How the trained students open a decline (ABSTAIN_ANSWER, "The documents do not say."): the chat
# bans these openings where the context mentions what is asked (ChatOptions.let_model_decline)
DECLINE_OPENINGS = ("The documents", "The document", "I don", "I do not")


def is_abstention(text: str) -> bool:
    """Whether an answer declines (ABSTAIN_ANSWER or a close paraphrase)."""
    lowered = " ".join(text.lower().replace("\u2019", "'").split())
    return any(marker in lowered for marker in _ABSTAIN_MARKERS)


_FACT_SYLLABLES = ["bra", "mo", "ket", "zil", "fa", "dun", "ora", "pel", "tas", "rho", "vi", "gan", "sto", "lek", "am", "cor"]  # fmt: skip
_FIRST_NAMES = ["Adaeze", "Bertil", "Casimir", "Dunya", "Eskil", "Fenna", "Gaspard", "Hilde", "Ivo", "Jorunn", "Kasimir", "Liesel", "Marit", "Nils", "Oona", "Pavlo", "Quirin", "Rasa", "Sigrun", "Tobiah"]  # fmt: skip
_LAST_NAMES = ["Abernathy", "Brackwater", "Coldridge", "Dunmore", "Ellory", "Fairweather", "Grislow", "Hartigan", "Ironside", "Jessop", "Kettering", "Lowther", "Mayhew", "Northcott", "Ormsby", "Pennington"]  # fmt: skip

# kind: (noun, founding verb, count noun, "known for" choices, how-to (task, instruction choices))
_FACT_KINDS = {
    "club": ("chess club", "founded", "members", ["its blitz tournaments", "a winter league", "teaching beginners", "correspondence games"],
             ("sign up", ["fill in the form at the front desk", "email the secretary at join@{slug}.example", "come to any Tuesday meeting and ask for a card"])),
    "festival": ("kite festival", "started", "stalls", ["night kites with lanterns", "a parade of giant fish kites", "a children's building contest", "its fireworks"],
                 ("get a ticket", ["buy one at the north gate", "book online at {slug}.example/tickets", "send a text with the word KITE to 4410"])),
    "farm": ("goat farm", "set up", "goats", ["a blue-veined cheese", "goat-milk soap", "hillside walking tours", "its honey"],
             ("book a visit", ["call the farm office on 0{num}", "use the form at {slug}.example/visit", "ring the bell at the gate before noon"])),
    "lab": ("robotics lab", "established", "researchers", ["walking robots", "underwater drones", "robot hands", "swarm robots"],
            ("borrow a robot", ["run `{slug} borrow --robot` at a lab terminal", "ask the lab manager for a loan slip", "sign the sheet by the workshop door"])),
    "band": ("brass band", "formed", "players", ["marching at harvest fairs", "jazz arrangements", "playing on the harbour wall", "its tuba section"],
             ("hire the players", ["write to bookings@{slug}.example", "call the bandmaster on 0{num}", "fill in the request card at the bandstand"])),
    "ferry": ("ferry line", "opened", "boats", ["its red-sailed boats", "a night crossing", "carrying bicycles free", "its onboard bakery"],
              ("take a bicycle aboard", ["buy a bike tag at the pier kiosk", "add a bicycle when you book at {slug}.example", "show up ten minutes early and ask the deckhand"])),
}  # fmt: skip

# (type, question templates, answer templates); {e} the entity, {noun}/{count}/{task} from the kind
_FACT_QUESTIONS = {
    "who": (["Who {founded} {e}?", "Who was the founder of {e}?", "Which person {founded} {e}?", "Who is behind {e}?"],
            ["{e} was {founded} by {who}.", "{who} {founded} {e}.", "{who}."]),
    "when": (["When was {e} {founded}?", "In what year was {e} {founded}?", "What year did {e} begin?", "Since when has {e} existed?"],
             ["{e} was {founded} in {year}.", "In {year}.", "It was {founded} in {year}."]),
    "how-many": (["How many {count} does {e} have?", "What is the number of {count} at {e}?", "How many {count} are there at {e}?"],
                 ["{e} has {n} {count}.", "{n} {count}.", "It has {n} {count}."]),
    "what": (["What is {e} known for?", "What is {e} famous for?", "What is special about {e}?"],
             ["{e} is known for {what}.", "It is known for {what}.", "For {what}."]),
    "how-to": (["How do I {task} at {e}?", "How can I {task} at {e}?", "What should I do to {task} at {e}?"],
               ["To {task} at {e}, {how}.", "{How}."]),
}  # fmt: skip
_ABSENT_SHARE = 0.2  # of the fact rows: questions whose answer the context does not hold


@dataclass(frozen=True)
class Profile:
    """A made-up entity and its facts (``facts``: question type -> the value the answer names)."""

    name: str  # "the Zilfa chess club"
    kind: str
    facts: dict  # type -> value ("who": "Dunya Lowther", "when": "1987", ...); absent types left out
    text: str  # the profile as a document


def _profile(rng: random.Random, kind: str, names: set[str]) -> Profile:
    noun, founded, count, whats, (task, hows) = _FACT_KINDS[kind]
    while True:
        stem = "".join(rng.sample(_FACT_SYLLABLES, rng.randint(2, 3))).capitalize()
        if stem not in names:
            names.add(stem)
            break
    name = f"the {stem} {noun}"
    slug = stem.lower()
    values = {
        "who": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
        "when": str(rng.randint(1890, 2019)),
        "how-many": str(rng.randint(3, 480)),
        "what": rng.choice(whats),
        "how-to": rng.choice(hows).format(slug=slug, num=rng.randint(1000000, 9999999)),
    }
    title = name[4:]
    sentences = {
        "who": rng.choice([f"{title[0].upper()}{title[1:]} was {founded} by {values['who']}.",
                           f"{values['who']} {founded} {name}.",
                           f"Its founder is {values['who']}."]),
        "when": rng.choice([f"It was {founded} in {values['when']}.", f"It dates from {values['when']}.",
                            f"{title[0].upper()}{title[1:]} has existed since {values['when']}."]),
        "how-many": rng.choice([f"Today it has {values['how-many']} {count}.", f"There are {values['how-many']} {count}.",
                                f"It counts {values['how-many']} {count}."]),
        "what": rng.choice([f"It is known for {values['what']}.", f"Visitors know it for {values['what']}.",
                            f"It is famous for {values['what']}."]),
        "how-to": f"To {task} at {name}, {values['how-to']}.",
    }  # fmt: skip
    kept = [t for t in sentences if t == "who" or rng.random() > 0.25]  # some facts left out
    order = kept[:1] + rng.sample(kept[1:], len(kept) - 1)
    text = f"## {title[0].upper()}{title[1:]}\n\n" + " ".join(sentences[t] for t in order)
    return Profile(name, kind, {t: values[t] for t in kept}, text)


def _fact_pair(rng: random.Random, profile: Profile, qtype: str, absent: bool) -> tuple[str, str]:
    noun, founded, count, _, (task, _) = _FACT_KINDS[profile.kind]
    questions, answers = _FACT_QUESTIONS[qtype]
    e = profile.name
    question = rng.choice(questions).format(e=e, founded=founded, count=count, task=task)
    question = question[0].upper() + question[1:]
    if absent:
        return question, ABSTAIN_ANSWER
    value = profile.facts[qtype]
    answer = rng.choice(answers).format(
        e=e, founded=founded, count=count, task=task, who=value, year=value, n=value, what=value,
        how=value, How=value[0].upper() + value[1:],
    )  # fmt: skip
    return question, answer[0].upper() + answer[1:]


@dataclass(frozen=True)
class FactRow:
    example: Example
    profile: Profile  # the entity asked about
    qtype: str  # who / when / how-many / what / how-to
    absent: bool  # the context does not hold the answer (answered with ABSTAIN_ANSWER)


def fact_rows(n: int, seed: int = 0) -> list[FactRow]:
    """``n`` RAG-layout rows on made-up profiles (see the section comment above), a fifth of them
    questions whose answer the context does not hold, with what each row asks."""
    rng = random.Random(seed)
    rows: list[FactRow] = []
    while len(rows) < n:
        names: set[str] = set()  # the names within one row's context differ
        kind = rng.choice(list(_FACT_KINDS))
        group = [_profile(rng, kind, names) for _ in range(rng.randint(2, 4))]
        others = [_profile(rng, rng.choice(list(_FACT_KINDS)), names) for _ in range(2)]
        asked = group[0]
        absent = rng.random() < _ABSENT_SHARE
        if absent:
            missing = [t for t in _FACT_QUESTIONS if t not in asked.facts]
            if not missing or rng.random() < 0.3:  # or an entity that is not in the context at all
                asked = _profile(rng, kind, names)
                missing = list(_FACT_QUESTIONS)
            qtype = rng.choice(missing)
        else:
            qtype = rng.choice(list(asked.facts))
        question, answer = _fact_pair(rng, asked, qtype, absent)
        pool = [p for p in group[1:] + others if p is not asked]
        chunks = rng.sample(pool, rng.randint(1, min(3, len(pool))))
        if asked is group[0]:
            chunks.insert(rng.randint(0, len(chunks)), asked)
        named = [(p.text, f"{p.kind}s.md") for p in chunks]
        key = None if absent else asked.facts[qtype]
        example = _rag_example(f"builtin:rag-fact:{seed}:{len(rows)}", named, question, answer, key)
        absent = absent or example.response == ABSTAIN_ANSWER  # focus dropped the answer
        rows.append(FactRow(example, asked, qtype, absent))
    return rows


def fact_qa_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` RAG-layout examples on made-up profiles (:func:`fact_rows`)."""
    return [row.example for row in fact_rows(n, seed)]
