"""Image-text data: a user's folder of images plus a JSONL, a Hugging Face dataset, or the
synthetic corpus.

A source is ``synthetic`` (:mod:`nexus.multimodal.synthetic`), a JSONL/JSON file, a folder
holding one (``*.jsonl``/``*.json`` at its top), or ``hf:NAME[:SPLIT]``, a Hugging Face dataset
read through ``datasets`` (:mod:`nexus.data.hub`; split ``train`` by default). Each row is::

    {"image": "cat.png", "prompt": "What animal is this?", "response": "A cat."}
    {"images": ["a.png", "b.png"], "prompt": "<image> and <image>: which is bigger?", "response": "The first."}

with optional ``choices`` + ``label`` (a multiple-choice item) and ``capability`` (a probe group
for profiling; default ``general``). An image is a path (relative to the file's folder, to the
working directory for a dataset, or absolute), a PIL image (a ``datasets.Image`` column) or a
``{"bytes": ..., "path": ...}`` dict (an undecoded one). Instead of ``prompt``/``response`` a
row may hold a chat, ``conversations`` (LLaVA: ``{"from": "human"|"gpt", "value": ...}``) or
``messages`` (``{"role": "user"|"assistant", "content": ...}``, the content a string or a list
of ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts): its first user turn is the
prompt and the assistant turn after it the response (later turns are not used).
A prompt may place its images with ``<image>`` markers, one per image; without markers the
images come first. A row whose image is missing, unreadable or not an image is skipped with one
warning naming the row and the reason; rows without a prompt and response are skipped the
same way. When nothing is left the source is a one-line :class:`~nexus.errors.NexusError`.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nexus.data.formats import read_rows
from nexus.data.hub import is_hf_source, load_hf_dataset, parse_hf_source
from nexus.errors import NexusError
from nexus.multimodal.synthetic import VisionExample, synthetic_examples

log = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
SYNTHETIC = "synthetic"
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt")


def _open_image(source: Any, label: str):
    """The picture ``source`` (a path, encoded bytes in a file object, or a PIL image) as RGB,
    fully decoded (a truncated file fails here, not later)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, Image.Image):  # decoded by the caller: not ours to close
            source.load()
            return source.convert("RGB")
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {label} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"image {label} is unreadable ({type(exc).__name__}: {exc})") from None


def _image(ref: Any, root: Path, name: str):
    """(the picture, its name in reports) of one image entry; ``name`` when it has none."""
    from PIL import Image

    if isinstance(ref, dict) and (ref.get("bytes") or ref.get("path")):
        name = ref.get("path") or name
        if ref.get("bytes"):
            return _open_image(io.BytesIO(ref["bytes"]), name), name
        ref = ref["path"]
    if isinstance(ref, str) and ref:
        path = Path(ref) if Path(ref).is_absolute() else root / ref
        return _open_image(path, str(path)), ref
    if isinstance(ref, Image.Image):
        return _open_image(ref, name), name
    raise ValueError(f"the image entry {ref!r:.40} is not a path, encoded bytes or a picture")


def _turn_text(content: Any) -> str:
    """A chat turn's text, its image parts as ``<image>`` markers."""
    if isinstance(content, str):
        return re.sub(rf"\n*{IMAGE_MARKER}\n*", IMAGE_MARKER, content).strip()
    if not isinstance(content, list):
        raise ValueError(f"a chat turn's content is a {type(content).__name__}, not text or a list of parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append(IMAGE_MARKER)
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            raise ValueError(f"a chat turn holds a part that is neither text nor an image: {part!r:.60}")
    return "".join(parts).strip()


def _turn_field(turn: Any, *keys: str) -> Any:
    """The first of ``keys`` a chat turn holds (LLaVA's ``from``/``value``, chat messages'
    ``role``/``content``)."""
    return next((turn[k] for k in keys if isinstance(turn, dict) and turn.get(k) is not None), None)


def _from_chat(turns: Any) -> tuple[str, str]:
    """(prompt, response): the first user turn and the assistant turn right after it."""
    if not isinstance(turns, list):
        raise ValueError("'conversations'/'messages' is not a list of turns")
    roles = [_turn_field(turn, "role", "from") for turn in turns]
    for i in range(len(turns) - 1):
        if roles[i] in USER_ROLES and roles[i + 1] in ASSISTANT_ROLES:
            user, assistant = (_turn_field(turn, "content", "value") for turn in turns[i : i + 2])
            return _turn_text(user), _turn_text(assistant)
    raise ValueError("the chat has no user turn followed by an assistant turn")


def _row_example(row: dict[str, Any], root: Path, where: str) -> VisionExample:
    refs = row.get("images") or row.get("image")
    if not isinstance(refs, list | tuple):
        refs = [] if refs is None else [refs]
    if not refs:
        raise ValueError("no 'image' or 'images'")
    prompt, response = row.get("prompt"), row.get("response")
    chat = row.get("conversations") or row.get("messages")
    if prompt is None and response is None and chat is not None:
        prompt, response = _from_chat(chat)
    for key, value in (("prompt", prompt), ("response", response)):
        if not isinstance(value, str):
            raise ValueError(f"missing '{key}' (and no 'conversations'/'messages' chat)")
    markers = prompt.count(IMAGE_MARKER)
    if markers and markers != len(refs):
        raise ValueError(f"the prompt has {markers} {IMAGE_MARKER} markers for {len(refs)} images")
    loaded = [
        _image(ref, root, where if len(refs) == 1 else f"{where}#{k + 1}") for k, ref in enumerate(refs)
    ]
    choices = row.get("choices") or []
    label = int(row["label"]) if choices and row.get("label") is not None else -1
    if choices and not 0 <= label < len(choices):
        raise ValueError(f"label {row.get('label')!r} is not an index into its {len(choices)} choices")
    return VisionExample(
        images=[image for image, _ in loaded],
        prompt=prompt,
        response=response,
        capability=str(row.get("capability") or "general"),
        choices=[str(c) for c in choices],
        label=label,
        image_names=[name for _, name in loaded],
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


def _hf_rows(source: str) -> Iterator[tuple[str, dict[str, Any] | ValueError]]:
    """(where, row) of a dataset, by index: a row whose image the library cannot decode comes as
    the ValueError that skips it, and the rows after it still come."""
    name, split = parse_hf_source(source)
    ds = load_hf_dataset(name, split=split, subject=source)
    for i in range(len(ds)):
        where = f"{name}[{split}]:{i + 1}"
        try:
            row = ds[i]
        except Exception as exc:  # decoding happens here: PIL and datasets raise many types
            yield where, ValueError(f"unreadable ({type(exc).__name__}: {exc})")
            continue
        yield where, dict(row)


def _usable_rows(
    rows: Iterable[tuple[str, dict[str, Any] | ValueError]], root: Path, subject: str, limit: int | None
) -> list[VisionExample]:
    examples: list[VisionExample] = []
    skipped = 0
    for where, row in rows:
        try:
            if isinstance(row, ValueError):
                raise row
            examples.append(_row_example(row, root, where))
        except ValueError as exc:
            skipped += 1
            log.warning("%s: row skipped: %s", where, exc)
            continue
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise NexusError(
            f"{subject} has no usable image-text rows"
            + (f" ({skipped} skipped, see the warnings above)" if skipped else "")
        )
    if skipped:
        log.warning("%s: %d of %d rows skipped", subject, skipped, skipped + len(examples))
    return examples


def load_image_rows(source: str | Path, *, limit: int | None = None) -> list[VisionExample]:
    """The usable rows of a JSONL (or a folder with one), or of ``hf:NAME[:SPLIT]``; see the
    module docstring."""
    if is_hf_source(source):
        return _usable_rows(_hf_rows(source), Path.cwd(), source, limit)
    data_file = _data_file(Path(source).expanduser())
    rows = ((f"{data_file}:{line_no}", row) for line_no, row in read_rows(data_file))
    return _usable_rows(rows, data_file.parent, str(data_file), limit)


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
