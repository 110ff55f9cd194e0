"""General-domain rows for the built-in corpus: the teacher's own sampled answers to many diverse
seed prompts, and the interpreter's own reference documentation.

Why: a student recovers the teacher from what it is shown. The stdlib code, templated arithmetic
and 60 chat answers of :mod:`nexus.data.builtin` are ~64k unique tokens, so a 200-step phase 2
walks them six times and hardly moves the student on general text (commonsense, how-to
knowledge). Two offline sources add volume and diversity:

* ``general``: prompts composed from subject lists x question templates about everyday objects,
  household tasks, nature and science, places and comparisons (:func:`general_prompts`), answered
  by the teacher with sampling (:func:`nexus.data.builtin.teacher_answers`), i.e. text from the
  teacher's own distribution -- the data on which matching its logits teaches the most;
* ``docs``: the Python language reference and library topics shipped with the interpreter
  (``pydoc_data.topics``, PSF license), cut into paragraphs-sized blocks (:func:`pydoc_blocks`).

No evaluation row is used or imitated: the subject lists are written for this project.
"""

from __future__ import annotations

import random
import re

from nexus.data.formats import Example

OBJECTS = (
    "a hammer",
    "a kitchen sponge",
    "duct tape",
    "a paper clip",
    "a rubber band",
    "aluminium foil",
    "a wooden spoon",
    "a glass jar",
    "baking soda",
    "white vinegar",
    "a screwdriver",
    "a candle",
    "a bath towel",
    "a metal bucket",
    "a step ladder",
    "a zipper",
    "a fridge magnet",
    "a flashlight",
    "a needle and thread",
    "a plastic bottle",
    "a cardboard box",
    "sandpaper",
    "a funnel",
    "a clothes peg",
    "a broom",
    "an umbrella",
    "a picnic cooler",
    "a garden hose",
    "a frying pan",
    "an electric kettle",
    "an ice cube tray",
    "a tennis ball",
    "a shoelace",
    "a coffee filter",
    "olive oil",
    "table salt",
    "a lemon",
    "toothpaste",
    "a hair dryer",
    "a rolling pin",
    "a cutting board",
    "a kitchen sieve",
    "a stapler",
    "a pair of scissors",
    "a stick of chalk",
    "a bar of soap",
    "a pillowcase",
    "a pencil eraser",
    "a spray bottle",
    "a measuring cup",
    "a tape measure",
    "a padlock",
    "a wheelbarrow",
    "a compass",
    "a cast iron skillet",
    "a wool blanket",
    "a bicycle pump",
    "a toothbrush",
    "a wire coat hanger",
    "a clay flower pot",
    "cling film",
    "a rubber glove",
    "a paintbrush",
    "a plastic straw",
    "a ceramic mug",
    "a watering can",
    "a pocket knife",
    "a thermos flask",
    "a mirror",
    "a silk scarf",
)
TASKS = (
    "paint a wooden fence",
    "boil an egg",
    "fix a flat bicycle tyre",
    "plant tomato seeds",
    "sharpen a kitchen knife",
    "fold a fitted sheet",
    "remove a coffee stain from a shirt",
    "unclog a kitchen drain",
    "pack a suitcase for a week",
    "build a campfire safely",
    "hang a picture frame on a wall",
    "make pancakes from scratch",
    "wash a wool sweater",
    "keep bread fresh for longer",
    "cool down a hot room without air conditioning",
    "clean a cast iron pan",
    "tie a strong knot in a rope",
    "open a jar with a stuck lid",
    "change a light bulb",
    "defrost a freezer",
    "iron a dress shirt",
    "bake a loaf of bread",
    "repot a house plant",
    "remove rust from a tool",
    "wrap a present neatly",
    "clean windows without streaks",
    "store fresh herbs",
    "make a paper airplane",
    "carry a heavy box safely",
    "dry wet shoes quickly",
    "cut an onion without crying",
    "patch a hole in jeans",
    "polish silver cutlery",
    "start a compost heap",
    "sew a button back on",
    "keep ants out of the kitchen",
    "make a cup of cold brew coffee",
    "clean a computer keyboard",
    "get rid of a bad smell in the fridge",
    "pitch a tent in the wind",
    "water plants while on holiday",
    "remove a splinter",
    "peel a hard-boiled egg easily",
    "keep a bicycle chain in good shape",
    "whisk egg whites until stiff",
    "melt chocolate",
    "descale a kettle",
    "measure flour accurately",
    "light a charcoal grill",
    "clean a paintbrush",
    "keep cut flowers fresh",
    "freeze soup",
    "fix a wobbly table",
    "stack firewood",
    "clean a stained bathtub",
    "glue a broken mug",
    "loosen a tight screw",
    "knead dough",
)
CONCEPTS = (
    "friction",
    "evaporation",
    "magnetism",
    "buoyancy",
    "rust",
    "static electricity",
    "condensation",
    "gravity",
    "heat conduction",
    "sound echoes",
    "surface tension",
    "erosion",
    "photosynthesis",
    "fermentation",
    "the boiling point of water",
    "air pressure",
    "levers",
    "pulleys",
    "insulation",
    "melting and freezing",
    "density",
    "reflection of light",
    "inertia",
    "the water cycle",
    "composting",
    "electric circuits",
    "the seasons",
    "tides",
    "camouflage",
    "pollination",
    "lightning",
    "rainbows",
    "muscle memory",
    "caffeine",
    "sunburn",
    "yeast",
    "soap and grease",
    "salt on icy roads",
    "the greenhouse effect",
    "batteries",
)
PLACES = (
    "a busy train station",
    "a farm in spring",
    "a small fishing village",
    "a mountain hut",
    "a school library",
    "a night market",
    "a hospital waiting room",
    "a bakery before dawn",
    "a football stadium",
    "a quiet beach in winter",
    "a city park on Sunday",
    "a desert campsite",
    "a repair workshop",
    "a science museum",
    "a rainforest",
    "an airport at midnight",
    "a family kitchen",
    "a ski resort",
    "a flower shop",
    "a lighthouse",
)
PAIRS = (
    ("wood", "metal"),
    ("glass", "plastic"),
    ("a bicycle", "a car"),
    ("cotton", "wool"),
    ("tea", "coffee"),
    ("a gas stove", "an electric stove"),
    ("paper", "cloth bags"),
    ("a hammer", "a mallet"),
    ("butter", "olive oil"),
    ("a bath", "a shower"),
    ("walking", "running"),
    ("a map", "a GPS app"),
    ("rice", "pasta"),
    ("a pen", "a pencil"),
    ("a tent", "a hammock"),
    ("brick", "timber houses"),
    ("ice", "a cold pack"),
    ("a microwave", "an oven"),
    ("stairs", "a lift"),
    ("a candle", "a torch"),
)

TEMPLATES = {
    "object": (
        "What are some clever everyday uses for {x}?",
        "How do you clean and look after {x}?",
        "Describe {x}: what it is made of, how it works and what it is used for.",
        "What could go wrong if someone used {x} the wrong way?",
        "If you had no {x}, what could you use instead, and why would that work?",
        "What happens to {x} if you leave it outside in the rain for a week?",
    ),
    "task": (
        "Explain step by step how to {x}.",
        "What tools and materials do I need to {x}?",
        "What is the most common mistake people make when they {x}, and how can it be avoided?",
        "Give a beginner's guide to how to {x}.",
        "Why does the usual method to {x} work? Explain the physics or chemistry behind it.",
        "My friend wants to {x} but has never done it. What advice would you give?",
    ),
    "concept": (
        "Explain {x} with an everyday example.",
        "How does {x} show up in daily life at home?",
        "Write a short lesson for children about {x}.",
        "What is a common misunderstanding about {x}?",
    ),
    "place": (
        "Describe a morning at {x}.",
        "Write a short story set in {x}.",
        "What sounds, smells and sights would you notice at {x}?",
    ),
    "pair": (
        "Compare {a} and {b}: when would you choose each?",
        "What are the practical differences between {a} and {b}?",
    ),
}


def _all_prompts() -> list[str]:
    combos: list[str] = []
    for kind, subjects in (("object", OBJECTS), ("task", TASKS), ("concept", CONCEPTS), ("place", PLACES)):
        combos += [t.format(x=s) for s in subjects for t in TEMPLATES[kind]]
    combos += [t.format(a=a, b=b) for a, b in PAIRS for t in TEMPLATES["pair"]]
    return combos


def general_prompt_count() -> int:
    """How many distinct prompts :func:`general_prompts` can give."""
    return len(_all_prompts())


def general_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts (every subject x each template of its family), shuffled by ``seed``."""
    combos = _all_prompts()
    rng = random.Random(seed)
    rng.shuffle(combos)
    if n > len(combos):
        raise ValueError(f"builtin general: at most {len(combos)} distinct prompts, asked for {n}")
    return combos[:n]


def general_prompt_examples(n: int, seed: int = 0) -> list[Example]:
    """Chat rows (no responses yet) for :func:`nexus.data.builtin.teacher_answers` to answer."""
    return [
        Example("chat", f"builtin:general:{seed}:{i}", "chat", prompt=p)
        for i, p in enumerate(general_prompts(n, seed))
    ]


def pydoc_blocks(n: int, seed: int = 0, max_chars: int = 1400) -> list[Example]:
    """``n`` text blocks of the interpreter's reference docs (``pydoc_data.topics``), each cut at
    paragraph boundaries to at most ``max_chars`` characters; topics in ``seed`` order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; the other sources still work
        return []
    blocks: list[Example] = []
    names = sorted(topics)
    random.Random(seed).shuffle(names)
    for name in names:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[name]) if p.strip()]
        current = ""
        part = 0
        for para in paragraphs:
            if current and len(current) + len(para) + 2 > max_chars:
                blocks.append(Example("text", f"pydoc:{name}:{part}", "code", text=current))
                part += 1
                current = ""
            current = f"{current}\n\n{para}" if current else para[:max_chars]
        if len(current) >= 200:
            blocks.append(Example("text", f"pydoc:{name}:{part}", "code", text=current))
    rng = random.Random(seed)
    rng.shuffle(blocks)
    return blocks[:n]
