"""Evaluation sets for grounded answers (:mod:`nexus.benchmark.grounding`, used by
``benchmarks/bench_grounding.py`` and the retention report): made-up documents and questions.

* ``heldout``: three domains that no training row mentions (island villages, lending libraries,
  family shops), written with their own syllables, person names, prose and question phrasings,
  and seeded apart from the training rows. Nothing was tuned on them: they are the reported test.
* ``dev``: profiles from the training generator's own kinds (``nexus.data.grounded``) under a
  seed no training recipe uses; the context layout was chosen on this set.

Each set is a list of documents (file name, markdown) and of questions: (domain, type, question,
the strings any of which makes an answer right); the type ``absent`` marks a question whose
answer no document holds (the document about that entity leaves the fact out), where the right
answer is to decline. Deterministic given the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

HELDOUT_SEED = 2718
DEV_SEED = 90210  # training rows use small seeds (the pipeline's seed, 0 by default)
TYPES = ("who", "when", "how-many", "what", "how-to")

# Held-out vocabulary: no syllable, first or last name here is in nexus.data.grounded's lists
# (tests/test_grounding_sets.py checks it, and that no entity name reaches a training row).
SYLLABLES = ["wen", "thu", "quo", "ix", "ul", "ser", "bai", "nim", "hol", "jeb", "ock", "yar", "ew", "plo", "tiv", "gra"]  # fmt: skip
FIRST_NAMES = ["Wilhelmina", "Osric", "Yevgenia", "Thaddeus", "Ulla", "Zebedee", "Perpetua", "Ignatius", "Clothilde", "Barnaby", "Ottoline", "Lysander"]  # fmt: skip
FAMILIES = ["Quenby", "Tregarthen", "Vosper", "Whitlock", "Yelland", "Ashgrove", "Blaxland", "Crowther", "Dimmock", "Ebsworth", "Farrant", "Gulliver"]  # fmt: skip


@dataclass(frozen=True)
class Question:
    domain: str
    qtype: str  # one of TYPES, or "absent"
    text: str
    answers: tuple[str, ...]  # any of them, contained in the answer, makes it right; () for absent


@dataclass(frozen=True)
class EvalSet:
    name: str
    documents: list[tuple[str, str]]  # (file name, markdown)
    questions: list[Question]


@dataclass(frozen=True)
class _Vocabulary:
    syllables: tuple[str, ...]
    first_names: tuple[str, ...]
    families: tuple[str, ...]


HELDOUT_VOCABULARY = _Vocabulary(tuple(SYLLABLES), tuple(FIRST_NAMES), tuple(FAMILIES))
# The development domains' own words: none is in the held-out lists or in the training generator's
# (tests/test_grounding_sets.py checks it).
DEV_DOMAINS_SEED = 4242
DEV_VOCABULARY = _Vocabulary(
    ("mar", "tek", "osk", "lin", "vard", "eb", "sun", "kel", "pra", "dov", "rim", "ast", "fol", "ben", "urk", "zel"),
    ("Annika", "Bartholomew", "Cressida", "Dagfinn", "Emmeline", "Fitzroy", "Griselda", "Horatio", "Isolde", "Jethro", "Kerensa", "Leopold"),
    ("Ashby", "Brindle", "Coppard", "Dewhurst", "Etheridge", "Frobisher", "Goodhew", "Hazeldine", "Ingram", "Jolliffe", "Kitteridge", "Lambourne"),
)  # fmt: skip


def _name(rng: random.Random, used: set[str], vocab: _Vocabulary = HELDOUT_VOCABULARY) -> str:
    while True:
        name = "".join(rng.sample(vocab.syllables, rng.randint(2, 3))).capitalize()
        if name not in used:
            used.add(name)
            return name


def _person(rng: random.Random, vocab: _Vocabulary = HELDOUT_VOCABULARY) -> str:
    return f"{rng.choice(vocab.first_names)} {rng.choice(vocab.families)}"


@dataclass(frozen=True)
class _Domain:
    """A held-out domain: what is drawn for each entity, in this order (the made-up word of its
    name, ``extra``, then the facts who / when / how-many / what / how-to, then the filler), and
    the templates of what its document says (``{name}``, ``{v}`` the fact, ``extra``'s keys)."""

    name: str  # around the made-up word
    extra: Callable[[random.Random, set[str], _Vocabulary], dict[str, str]]
    who: Callable[[random.Random, dict[str, str], _Vocabulary], str]
    years: tuple[int, int]
    counts: tuple[int, int]
    what: tuple[str, ...]
    how_to: Callable[[random.Random, set[str], str, dict[str, str], _Vocabulary], str]
    facts: dict[str, tuple[str, str]]  # type -> (sentence, question)
    intro: str
    fillers: tuple[str, ...]


_DOMAINS = {
    "villages": _Domain(
        name="{}",
        extra=lambda rng, used, vocab: {"island": _name(rng, used, vocab)},
        who=lambda rng, extra, vocab: _person(rng, vocab),
        years=(1602, 1899),
        counts=(40, 2900),
        what=("smoked mackerel", "woven reed baskets", "sea-salt caramel", "painted tiles", "seaweed bread"),
        how_to=lambda rng, used, name, extra, vocab: f"ferry {rng.randint(2, 19)} from {_name(rng, used, vocab)} pier",
        facts={
            "who": ("The harbour master of {name} is {v}.", "Who is the harbour master of {name}?"),
            "when": ("The first houses of {name} were built in {v}.", "When were the first houses of {name} built?"),
            "how-many": ("About {v} people live in {name} all year round.", "How many people live in {name}?"),
            "what": ("The village is best known for its {v}.", "What is {name} best known for?"),
            "how-to": ("Visitors reach {name} by taking {v}.", "How do I get to {name}?"),
        },
        intro="# {name}\n\n{name} is a fishing village on the island of {island}.",
        fillers=("The lighthouse is painted in red stripes.", "A market is held on the quay every Saturday.", "The old chapel has no roof."),
    ),
    "libraries": _Domain(
        name="{} Reading Rooms",
        extra=lambda rng, used, vocab: {"code": "".join(rng.sample("BCDFGHJKLMNPRSTVWXZ", 3))},
        who=lambda rng, extra, vocab: _person(rng, vocab),
        years=(1850, 2009),
        counts=(1200, 98000),
        what=("old sea charts", "botanical drawings", "recipe manuscripts", "chess problem books", "railway timetables"),
        how_to=lambda rng, used, name, extra, vocab: f"send the code RENEW-{extra['code']} to the library's number",
        facts={
            "who": ("The head librarian is {v}.", "Who is the head librarian of the {name}?"),
            "when": ("The library opened its doors in {v}.", "In which year did the {name} open?"),
            "how-many": ("Its shelves hold {v} books.", "How many books do the {name} hold?"),
            "what": ("Its special collection is {v}.", "What is the special collection of the {name}?"),
            "how-to": ("To renew a book, {v}.", "How can I renew a book at the {name}?"),
        },
        intro="# {name}\n\nThe {name} are a lending library.",
        fillers=("Readers may bring dogs on a lead.", "The reading room closes at six.", "Coffee is not allowed near the shelves."),
    ),
    "shops": _Domain(
        name="{} Provisions",
        extra=lambda rng, used, vocab: {"family": rng.choice(vocab.families)},
        who=lambda rng, extra, vocab: f"the {extra['family']} family",
        years=(1901, 2015),
        counts=(3, 60),
        what=("hand-ground spices", "second-hand telescopes", "wool socks", "brass door knobs", "loose-leaf tea"),
        how_to=lambda rng, used, name, extra, vocab: f"`{name.split()[0].lower()}-card --new`",
        facts={
            "who": ("The shop is owned by {v}.", "Which family owns {name}?"),
            "when": ("{name} has traded since {v}.", "Since what year has {name} been trading?"),
            "how-many": ("It employs {v} people.", "How many people work at {name}?"),
            "what": ("It mainly sells {v}.", "What does {name} mainly sell?"),
            "how-to": ("A loyalty card is made at the till with the command {v}.", "How do I get a loyalty card at {name}?"),
        },
        intro="# {name}\n\n{name} is a corner shop on Tollgate Lane.",
        fillers=("It is closed on Wednesdays.", "There is a bell above the door.", "Deliveries come on Monday mornings."),
    ),
}  # fmt: skip

# The development domains: built like the held-out ones, but their questions mostly paraphrase the
# documents ("Who runs ...?" of "The warden of ... is"), as users do. Thresholds and rules of the
# chat are chosen on these and on ``dev``, never on ``heldout``.
_DEV_DOMAINS = {
    "huts": _Domain(
        name="{} Hut",
        extra=lambda rng, used, vocab: {"valley": _name(rng, used, vocab)},
        who=lambda rng, extra, vocab: _person(rng, vocab),
        years=(1870, 1990),
        counts=(8, 120),
        what=("barley soup", "apple strudel", "cheese dumplings", "lentil stew", "bilberry pancakes"),
        how_to=lambda rng, used, name, extra, vocab: f"0{rng.randint(1000000, 9999999)}",
        facts={
            "who": ("The warden of {name} is {v}.", "Who runs {name}?"),
            "when": ("{name} was built in {v}.", "When was {name} built?"),
            "how-many": ("{name} sleeps {v} walkers.", "How many beds does {name} have?"),
            "what": ("Its kitchen is famous for {v}.", "What is the kitchen at {name} known for?"),
            "how-to": ("To reserve a bunk, call the valley office on {v}.", "How do I book a bed at {name}?"),
        },
        intro="# {name}\n\n{name} is a mountain hut above the {valley} valley.",
        fillers=("Dogs must stay outside.", "There is no shower.", "The path is steep in the last hour."),
    ),
    "bakeries": _Domain(
        name="{} Bakery",
        extra=lambda rng, used, vocab: {"market": _name(rng, used, vocab)},
        who=lambda rng, extra, vocab: _person(rng, vocab),
        years=(1890, 2012),
        counts=(60, 900),
        what=("rye sourdough", "cardamom buns", "seeded spelt rolls", "walnut bread", "onion flatbread"),
        how_to=lambda rng, used, name, extra, vocab: f"{name.split()[0].lower()}.example/cakes",
        facts={
            "who": ("The head baker is {v}.", "Who is the head baker at {name}?"),
            "when": ("The ovens of {name} were first lit in {v}.", "In what year did {name} open?"),
            "how-many": ("It bakes about {v} loaves a day.", "How many loaves does {name} bake each day?"),
            "what": ("Its best seller is {v}.", "What sells best at {name}?"),
            "how-to": ("Cake orders go through the form at {v}.", "How can I order a cake from {name}?"),
        },
        intro="# {name}\n\n{name} is a bakery beside the {market} market.",
        fillers=("The shop opens at seven.", "Bread from yesterday is sold at half price.", "Cash is not taken."),
    ),
    "observatories": _Domain(
        name="{} Observatory",
        extra=lambda rng, used, vocab: {"ridge": _name(rng, used, vocab)},
        who=lambda rng, extra, vocab: _person(rng, vocab),
        years=(1850, 1999),
        counts=(2, 14),
        what=("variable stars", "comets", "the rings of Saturn", "meteor showers", "double stars"),
        how_to=lambda rng, used, name, extra, vocab: f"`stargaze --site {name.split()[0].lower()}`",
        facts={
            "who": ("{v} directs the observatory.", "Who is the director of {name}?"),
            "when": ("The first telescope at {name} was put up in {v}.", "Since when has {name} had a telescope?"),
            "how-many": ("The site has {v} telescopes.", "How many telescopes are there at {name}?"),
            "what": ("Its astronomers mostly watch {v}.", "What do the astronomers at {name} study?"),
            "how-to": ("Seats for public nights are booked with the command {v}.", "How do I join a public night at {name}?"),
        },
        intro="# {name}\n\n{name} stands on the {ridge} ridge.",
        fillers=("The road is closed in snow.", "Visitors must bring a red torch.", "The dome was repainted last year."),
    ),
}  # fmt: skip


def _entity(
    rng: random.Random, used: set[str], domain: _Domain, vocab: _Vocabulary = HELDOUT_VOCABULARY
) -> tuple[str, dict, dict]:
    """One entity of ``domain``: its name, its facts (type -> (value, sentence, question)) and the
    intro and filler sentence of its document."""
    name = domain.name.format(_name(rng, used, vocab))
    extra = domain.extra(rng, used, vocab)
    values = {  # drawn in this order
        "who": domain.who(rng, extra, vocab),
        "when": str(rng.randint(*domain.years)),
        "how-many": str(rng.randint(*domain.counts)),
        "what": rng.choice(domain.what),
        "how-to": domain.how_to(rng, used, name, extra, vocab),
    }
    facts = {
        qtype: (
            value,
            domain.facts[qtype][0].format(name=name, v=value),
            domain.facts[qtype][1].format(name=name),
        )
        for qtype, value in values.items()
    }
    intro = domain.intro.format(name=name, **extra)
    return name, facts, {"intro": intro, "filler": rng.choice(domain.fillers)}


def heldout_set(seed: int = HELDOUT_SEED, entities: int = 6) -> EvalSet:
    """Three held-out domains, ``entities`` documents each: per domain two answerable questions
    of each type (who / when / how many / what / how-to) and ``entities`` unanswerable ones."""
    return _domains_set("heldout", _DOMAINS, HELDOUT_VOCABULARY, seed, entities)


def dev_domains_set(seed: int = DEV_DOMAINS_SEED, entities: int = 6) -> EvalSet:
    """Three development domains (mountain huts, bakeries, observatories) built as the held-out
    ones are, with their own names and mostly paraphrasing questions."""
    return _domains_set("dev-domains", _DEV_DOMAINS, DEV_VOCABULARY, seed, entities)


def _domains_set(
    set_name: str, domains: dict[str, _Domain], vocab: _Vocabulary, seed: int, entities: int
) -> EvalSet:
    rng = random.Random(seed)
    used: set[str] = set()
    documents, questions = [], []
    for domain, spec in domains.items():
        made = [_entity(rng, used, spec, vocab) for _ in range(entities)]
        types = [t for t in TYPES for _ in range(2)]
        for i, (_name, facts, extra) in enumerate(made):
            # each entity leaves one fact out (asked as "absent"); answerable questions use others
            missing = TYPES[i % len(TYPES)]
            sentences = [sentence for t, (_, sentence, _) in facts.items() if t != missing]
            rng.shuffle(sentences)
            sentences.insert(rng.randint(0, len(sentences)), extra["filler"])
            documents.append((f"{domain}-{i}.md", extra["intro"] + " " + " ".join(sentences) + "\n"))
            questions.append(Question(domain, "absent", facts[missing][2], ()))
        for qtype in types:  # each answerable question on the next entity that holds that fact
            for j in range(len(made)):
                name, facts, _ = made[j]
                if TYPES[j % len(TYPES)] != qtype and not any(
                    q.qtype == qtype and q.text == facts[qtype][2] for q in questions
                ):
                    value = facts[qtype][0]
                    keys = (
                        (value.strip("`"),)
                        if qtype != "who"
                        else (value.removeprefix("the "), value.split()[1])
                    )
                    questions.append(Question(domain, qtype, facts[qtype][2], keys))
                    break
    return EvalSet(set_name, documents, questions)


def dev_set(seed: int = DEV_SEED, entities: int = 30) -> EvalSet:
    """Profiles of the training generator's kinds (another seed): one document and one question
    each, the types in turn; a question on a fact that the profile leaves out is ``absent``."""
    from nexus.data.grounded import _fact_pair, _profile

    rng = random.Random(seed)
    names: set[str] = set()
    documents, questions = [], []
    kinds = ["club", "festival", "farm", "lab", "band", "ferry"]
    for i in range(entities):
        profile = _profile(rng, kinds[i % len(kinds)], names)
        documents.append((f"{profile.kind}-{i}.md", profile.text + "\n"))
        qtype = TYPES[i % len(TYPES)]
        absent = qtype not in profile.facts
        text, _ = _fact_pair(rng, profile, qtype, absent=absent)
        value = "" if absent else profile.facts[qtype]
        keys = () if absent else (value,) if qtype != "how-to" else (value, value.split(" at ")[-1])
        questions.append(Question(profile.kind, "absent" if absent else qtype, text, keys))
    return EvalSet("dev", documents, questions)


def made_up_names(eval_set: EvalSet) -> set[str]:
    """The invented names in ``eval_set``'s documents: words built from the held-out syllables
    (places, libraries, shops, piers, commands) and the people's first and family names."""
    import re

    vocabularies = (HELDOUT_VOCABULARY, DEV_VOCABULARY)
    syllables = "|".join(s for v in vocabularies for s in v.syllables)
    word = re.compile(rf"\b(?:{syllables}){{2,3}}\b", re.I)
    names = {m.group(0) for _, text in eval_set.documents for m in word.finditer(text)}
    people = {n for v in vocabularies for n in (*v.first_names, *v.families)}
    return names | {w for _, text in eval_set.documents for w in re.findall(r"\w+", text) if w in people}
