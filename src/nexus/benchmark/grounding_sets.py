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


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize()
        if name not in used:
            used.add(name)
            return name


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(FAMILIES)}"


def _village(rng: random.Random, used: set[str]) -> tuple[str, dict, dict]:
    name = _name(rng, used)
    island = _name(rng, used)
    facts = {
        "who": (_person(rng), f"The harbour master of {name} is {{v}}.", f"Who is the harbour master of {name}?"),
        "when": (str(rng.randint(1602, 1899)), f"The first houses of {name} were built in {{v}}.", f"When were the first houses of {name} built?"),
        "how-many": (str(rng.randint(40, 2900)), f"About {{v}} people live in {name} all year round.", f"How many people live in {name}?"),
        "what": (rng.choice(["smoked mackerel", "woven reed baskets", "sea-salt caramel", "painted tiles", "seaweed bread"]),
                 "The village is best known for its {v}.", f"What is {name} best known for?"),
        "how-to": (f"ferry {rng.randint(2, 19)} from {_name(rng, used)} pier", f"Visitors reach {name} by taking {{v}}.", f"How do I get to {name}?"),
    }  # fmt: skip
    intro = f"# {name}\n\n{name} is a fishing village on the island of {island}."
    filler = rng.choice(["The lighthouse is painted in red stripes.", "A market is held on the quay every Saturday.", "The old chapel has no roof."])  # fmt: skip
    return name, facts, {"intro": intro, "filler": filler}


def _library(rng: random.Random, used: set[str]) -> tuple[str, dict, dict]:
    name = f"{_name(rng, used)} Reading Rooms"
    code = "".join(rng.sample("BCDFGHJKLMNPRSTVWXZ", 3))
    facts = {
        "who": (_person(rng), "The head librarian is {v}.", f"Who is the head librarian of the {name}?"),
        "when": (str(rng.randint(1850, 2009)), "The library opened its doors in {v}.", f"In which year did the {name} open?"),
        "how-many": (str(rng.randint(1200, 98000)), "Its shelves hold {v} books.", f"How many books do the {name} hold?"),
        "what": (rng.choice(["old sea charts", "botanical drawings", "recipe manuscripts", "chess problem books", "railway timetables"]),
                 "Its special collection is {v}.", f"What is the special collection of the {name}?"),
        "how-to": (f"send the code RENEW-{code} to the library's number", "To renew a book, {v}.", f"How can I renew a book at the {name}?"),
    }  # fmt: skip
    intro = f"# {name}\n\nThe {name} are a lending library."
    filler = rng.choice(["Readers may bring dogs on a lead.", "The reading room closes at six.", "Coffee is not allowed near the shelves."])  # fmt: skip
    return name, facts, {"intro": intro, "filler": filler}


def _shop(rng: random.Random, used: set[str]) -> tuple[str, dict, dict]:
    name = f"{_name(rng, used)} Provisions"
    family = rng.choice(FAMILIES)
    facts = {
        "who": (f"the {family} family", "The shop is owned by {v}.", f"Which family owns {name}?"),
        "when": (str(rng.randint(1901, 2015)), f"{name} has traded since {{v}}.", f"Since what year has {name} been trading?"),
        "how-many": (str(rng.randint(3, 60)), "It employs {v} people.", f"How many people work at {name}?"),
        "what": (rng.choice(["hand-ground spices", "second-hand telescopes", "wool socks", "brass door knobs", "loose-leaf tea"]),
                 "It mainly sells {v}.", f"What does {name} mainly sell?"),
        "how-to": (f"`{name.split()[0].lower()}-card --new`", "A loyalty card is made at the till with the command {v}.", f"How do I get a loyalty card at {name}?"),
    }  # fmt: skip
    intro = f"# {name}\n\n{name} is a corner shop on Tollgate Lane."
    filler = rng.choice(["It is closed on Wednesdays.", "There is a bell above the door.", "Deliveries come on Monday mornings."])  # fmt: skip
    return name, facts, {"intro": intro, "filler": filler}


_DOMAINS = {"villages": _village, "libraries": _library, "shops": _shop}


def heldout_set(seed: int = HELDOUT_SEED, entities: int = 6) -> EvalSet:
    """Three held-out domains, ``entities`` documents each: per domain two answerable questions
    of each type (who / when / how many / what / how-to) and ``entities`` unanswerable ones."""
    rng = random.Random(seed)
    used: set[str] = set()
    documents, questions = [], []
    for domain, make in _DOMAINS.items():
        made = [make(rng, used) for _ in range(entities)]
        types = [t for t in TYPES for _ in range(2)]
        for i, (_name, facts, extra) in enumerate(made):
            # each entity leaves one fact out (asked as "absent"); answerable questions use others
            missing = TYPES[i % len(TYPES)]
            sentences = [
                template.format(v=value) for t, (value, template, _) in facts.items() if t != missing
            ]
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
    return EvalSet("heldout", documents, questions)


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

    word = re.compile(rf"\b(?:{'|'.join(SYLLABLES)}){{2,3}}\b", re.I)
    names = {m.group(0) for _, text in eval_set.documents for m in word.finditer(text)}
    people = set(FIRST_NAMES) | set(FAMILIES)
    return names | {w for _, text in eval_set.documents for w in re.findall(r"\w+", text) if w in people}
