"""Image-text data: a user's folder of images plus a JSONL, or the synthetic corpus.

A source is ``synthetic`` (:mod:`nexus.multimodal.synthetic`), a JSONL/JSON file, or a folder
holding one (``*.jsonl``/``*.json`` at its top). Each row is::

    {"image": "cat.png", "prompt": "What animal is this?", "response": "A cat."}
    {"images": ["a.png", "b.png"], "prompt": "<image> and <image>: which is bigger?", "response": "The first."}

with optional ``choices`` + ``label`` (a multiple-choice item) and ``capability`` (a probe group
for profiling; default ``general``). Image paths are relative to the file's folder (or absolute).
A prompt may place its images with ``<image>`` markers, one per image; without markers the
images come first. A row whose image is missing, unreadable or not an image is skipped with one
warning naming the row and the reason; rows without ``prompt``/``response`` are skipped the
same way. When nothing is left the source is a one-line :class:`~nexus.errors.NexusError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nexus.data.formats import read_rows
from nexus.errors import NexusError
from nexus.multimodal.synthetic import VisionExample, synthetic_examples

log = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
SYNTHETIC = "synthetic"


def _open_image(path: Path):
    """The picture at ``path`` as RGB, fully decoded (a truncated file fails here, not later)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"image {path} is unreadable ({type(exc).__name__}: {exc})") from None


def _row_example(row: dict[str, Any], root: Path, where: str) -> VisionExample:
    names = row.get("images", row.get("image"))
    if isinstance(names, str):
        names = [names]
    if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("no 'image' (a path) or 'images' (a list of paths)")
    for key in ("prompt", "response"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"missing '{key}'")
    markers = row["prompt"].count(IMAGE_MARKER)
    if markers and markers != len(names):
        raise ValueError(f"the prompt has {markers} {IMAGE_MARKER} markers for {len(names)} images")
    images = [_open_image(Path(n) if Path(n).is_absolute() else root / n) for n in names]
    choices = row.get("choices") or []
    label = int(row.get("label", -1)) if choices else -1
    if choices and not 0 <= label < len(choices):
        raise ValueError(f"label {row.get('label')!r} is not an index into its {len(choices)} choices")
    return VisionExample(
        images=images,
        prompt=row["prompt"],
        response=row["response"],
        capability=str(row.get("capability", "general")),
        choices=[str(c) for c in choices],
        label=label,
        image_names=list(names),
        source=where,
    )


def _data_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.json"))
        if len(files) == 1:
            return files[0]
        raise NexusError(
            f"{path} holds {len(files)} JSONL/JSON files; give the one with the image rows"
            if files
            else f"{path} holds no JSONL/JSON file of {{image, prompt, response}} rows"
        )
    raise NexusError(f"image-text data not found: {path}")


def load_image_rows(path: str | Path, *, limit: int | None = None) -> list[VisionExample]:
    """The usable rows of a JSONL (or a folder with one); see the module docstring."""
    data_file = _data_file(Path(path).expanduser())
    examples: list[VisionExample] = []
    skipped = 0
    for line_no, row in read_rows(data_file):
        where = f"{data_file}:{line_no}"
        try:
            examples.append(_row_example(row, data_file.parent, where))
        except ValueError as exc:
            skipped += 1
            log.warning("%s: row skipped: %s", where, exc)
            continue
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise NexusError(
            f"{data_file} has no usable image-text rows"
            + (f" ({skipped} skipped, see the warnings above)" if skipped else "")
        )
    if skipped:
        log.warning("%s: %d of %d rows skipped", data_file, skipped, skipped + len(examples))
    return examples


def load_vision_data(
    source: str, *, split: str = "train", n: int = 1000, seed: int = 0, image_size: int = 64
) -> list[VisionExample]:
    """``synthetic`` rows of ``split`` (``n`` of them), or the rows of a user's file/folder
    (at most ``n``; the user's data has no splits of its own: :func:`split_rows` makes them)."""
    if source == SYNTHETIC:
        return synthetic_examples(split, n, seed=seed, size=image_size)
    return load_image_rows(source, limit=n)


def split_rows(
    examples: list[VisionExample], heldout_fraction: float, seed: int
) -> tuple[list[VisionExample], list[VisionExample]]:
    """A user's rows as (train, held-out): a seeded shuffle, at least one held-out row when the
    fraction is positive and there are two rows or more."""
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_held = round(len(examples) * heldout_fraction)
    if heldout_fraction > 0 and len(examples) > 1:
        n_held = max(1, n_held)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [examples[i] for i in train], [examples[i] for i in held]


USER_HELDOUT_FRACTION = 0.1


def _user_split(source: str, seed: int) -> tuple[list[VisionExample], list[VisionExample]]:
    rows = load_image_rows(source)
    return split_rows(rows, USER_HELDOUT_FRACTION, seed)


def accuracy_examples(settings) -> list[VisionExample]:
    """The held-out questions accuracy is measured on (``settings``: a phase config with
    ``data``, ``image_size``, ``eval_rows`` and ``seed``): the synthetic ``heldout`` split, or the
    held-out tenth of a user's rows. No phase trains on them."""
    if settings.data == SYNTHETIC:
        return synthetic_examples("heldout", settings.eval_rows, seed=settings.seed, size=settings.image_size)
    held = _user_split(settings.data, settings.seed)[1]
    if not held:
        raise NexusError(f"{settings.data}: too few rows to hold any out for evaluation (need 2 or more)")
    return held[: settings.eval_rows]


def training_examples(settings) -> tuple[list[VisionExample], list[VisionExample]]:
    """(training rows, held-out rows for KD/agreement during training): the synthetic ``train``
    and ``dev`` splits, or a user's rows less their held-out tenth."""
    if settings.data == SYNTHETIC:
        return (
            synthetic_examples("train", settings.train_rows, seed=settings.seed, size=settings.image_size),
            synthetic_examples("dev", settings.heldout_rows, seed=settings.seed, size=settings.image_size),
        )
    train, held = _user_split(settings.data, settings.seed)
    if not train:
        raise NexusError(f"{settings.data}: no rows left to train on after holding out the evaluation rows")
    return train[: settings.train_rows], held[: settings.heldout_rows]
