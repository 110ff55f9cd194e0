"""The synthetic image-text corpus: pictures rendered offline with Pillow, questions about them.

No vision-language data can be downloaded on the machines Nexus is built on, so the embedded
default teacher is trained, and every student is measured, on pictures drawn at run time
(never stored in the repository). Each picture answers one question of one *capability*:

* ``colour``   -- one shape; "What colour is the shape?" -> ``red``
* ``shape``    -- one shape; "What shape is in the picture?" -> ``circle``
* ``position`` -- one shape near an edge; "Where is the shape?" -> ``left``
* ``count``    -- 1-4 shapes of one kind and colour; "How many shapes are there?" -> ``3``
* ``text``     -- a short printed word; "What word is written in the picture?" -> ``sun``

Every question has one short answer (exact-match scoring) and four choices, the answer and three
other values of the same attribute (multiple choice by log-likelihood, chance 25%).

Everything is a pure function of ``(seed, split, index)``: the splits ``train``, ``dev`` and
``heldout`` draw from disjoint seed streams, so two runs render the same pictures and a
held-out picture is never a training picture (renders may still share attributes, which is the
point: the held-out split measures recognition of new renders, not recall).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from nexus.errors import NexusError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = ("1", "2", "3", "4")
WORDS = ("cat", "dog", "sun", "box", "car", "hat", "pen", "cup")
CAPABILITIES = ("colour", "shape", "position", "count", "text")
SPLITS = ("train", "dev", "heldout")
N_CHOICES = 4

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What colour is the shape?", "Which colour does the shape have?"),
    "shape": ("What shape is in the picture?", "Name the shape in the picture."),
    "position": (
        "Where is the shape: left, right, top or bottom?",
        "On which side of the picture is the shape?",
    ),
    "count": ("How many shapes are there?", "Count the shapes in the picture."),
    "text": ("What word is written in the picture?", "Read the word in the picture."),
}
_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": POSITIONS,
    "count": COUNTS,
    "text": WORDS,
}
ANSWER_HINT = " Answer with one word."


@dataclass
class VisionExample:
    """One image-text row: ``images`` (PIL RGB images, in the order their ``<image>`` slots are
    filled), ``prompt`` and ``response``. ``choices``/``label`` make it a multiple-choice item,
    ``capability`` groups it for profiling and reports, ``image_names`` name the pictures in
    reports (a file name, or ``synthetic/<split>/<index>``). A synthetic row's ``attributes``
    are every capability's answer its picture determines (a colour question's single shape also
    has a shape and a count of 1), the labels of the default teacher's vision pre-training."""

    images: list[Any]
    prompt: str
    response: str
    capability: str = "general"
    choices: list[str] = field(default_factory=list)
    label: int = -1
    image_names: list[str] = field(default_factory=list)
    source: str = ""
    attributes: dict[str, str] = field(default_factory=dict)  # what a synthetic picture shows


def _rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"nexus-synthetic-vision/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _background(rng: random.Random, size: int):
    from PIL import Image

    grey = rng.randint(225, 255)
    return Image.new("RGB", (size, size), (grey, grey, rng.randint(225, 255)))


def _place(rng: random.Random, size: int, r: float, taken: list[tuple[float, float]]) -> tuple[float, float]:
    """A centre for a shape of radius ``r`` not overlapping the shapes at ``taken``."""
    for _ in range(200):
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
        if all(math.hypot(cx - x, cy - y) > 2.2 * r for x, y in taken):
            return cx, cy
    raise RuntimeError("no room for another shape")  # pragma: no cover - sizes leave room for 4


def render(capability: str, answer: str, rng: random.Random, size: int):
    """The picture for one question whose answer is ``answer``, and the attributes it shows."""
    from PIL import ImageDraw, ImageFont

    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    colour = COLOURS[answer] if capability == "colour" else COLOURS[rng.choice(list(COLOURS))]
    shape = answer if capability == "shape" else rng.choice(SHAPES)
    colour_name = next(name for name, rgb in COLOURS.items() if rgb == colour)
    attributes = {"colour": colour_name, "shape": shape, "count": "1", capability: answer}
    if capability in ("colour", "shape"):
        r = size * rng.uniform(0.18, 0.3)
        _draw_shape(draw, shape, *_place(rng, size, r, []), r, colour)
    elif capability == "position":
        r = size * rng.uniform(0.12, 0.18)
        near, along = r + size * 0.04, rng.uniform(size * 0.4, size * 0.6)
        centre = {
            "left": (near, along),
            "right": (size - near, along),
            "top": (along, near),
            "bottom": (along, size - near),
        }[answer]
        _draw_shape(draw, shape, *centre, r, colour)
    elif capability == "count":
        r = size * rng.uniform(0.08, 0.11)
        taken: list[tuple[float, float]] = []
        for _ in range(int(answer)):
            taken.append(_place(rng, size, r, taken))
            _draw_shape(draw, shape, *taken[-1], r, colour)
    elif capability == "text":
        font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.28, 0.34))))
        word = answer.upper()
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        x = rng.uniform(0, max(0, size - (right - left))) - left
        y = rng.uniform(0, max(0, size - (bottom - top))) - top
        ink = tuple(int(c * 0.6) for c in colour)
        draw.text((x, y), word, font=font, fill=ink)
        attributes = {"text": answer}
    else:
        raise NexusError(
            f"unknown synthetic capability '{capability}' (choose from {', '.join(CAPABILITIES)})"
        )
    return image, attributes


def synthetic_example(
    split: str, index: int, *, seed: int = 0, size: int = 64, capabilities: tuple[str, ...] = CAPABILITIES
) -> VisionExample:
    """Row ``index`` of ``split``: capabilities take turns, so every slice is balanced."""
    if split not in SPLITS:
        raise NexusError(f"unknown synthetic split '{split}' (choose from {', '.join(SPLITS)})")
    rng = _rng(seed, split, index)
    capability = capabilities[index % len(capabilities)]
    values = _VALUES[capability]
    answer = rng.choice(values)
    image, attributes = render(capability, answer, rng, size)
    distractors = rng.sample([v for v in values if v != answer], N_CHOICES - 1)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return VisionExample(
        images=[image],
        prompt=rng.choice(_QUESTIONS[capability]) + ANSWER_HINT,
        response=answer,
        capability=capability,
        choices=choices,
        label=choices.index(answer),
        image_names=[f"synthetic/{split}/{index}.png"],
        source=f"synthetic:{split}:{index}",
        attributes=attributes,
    )


def synthetic_examples(
    split: str,
    n: int,
    *,
    seed: int = 0,
    size: int = 64,
    offset: int = 0,
    capabilities: tuple[str, ...] = CAPABILITIES,
) -> list[VisionExample]:
    """``n`` rows of ``split`` starting at ``offset`` (deterministic in all arguments)."""
    unknown = [c for c in capabilities if c not in _VALUES]
    if unknown or not capabilities:
        raise NexusError(
            f"unknown synthetic capabilities {unknown or '[]'} (choose from {', '.join(CAPABILITIES)})"
        )
    return [
        synthetic_example(split, i, seed=seed, size=size, capabilities=capabilities)
        for i in range(offset, offset + n)
    ]
