"""The synthetic image-text corpus (deterministic, balanced, answerable) and the loader of a
user's folder of images + JSONL (bad rows warned about and skipped, an empty set refused)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from nexus.errors import NexusError
from nexus.multimodal.data import load_image_rows, load_vision_data, split_rows
from nexus.multimodal.synthetic import CAPABILITIES, COLOURS, synthetic_example, synthetic_examples


def _pixels(example):
    return np.asarray(example.images[0])


def test_synthetic_is_deterministic_and_splits_differ():
    a = synthetic_examples("train", 10, seed=3)
    b = synthetic_examples("train", 10, seed=3)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert all((_pixels(x) == _pixels(y)).all() for x, y in zip(a, b, strict=True))
    held = synthetic_examples("heldout", 10, seed=3)
    assert not any((_pixels(x) == _pixels(y)).all() for x, y in zip(a, held, strict=True))
    other_seed = synthetic_examples("train", 10, seed=4)
    assert not all((_pixels(x) == _pixels(y)).all() for x, y in zip(a, other_seed, strict=True))


def test_synthetic_rows_are_balanced_multiple_choice_items():
    rows = synthetic_examples("dev", 50, size=48)
    assert [r.capability for r in rows[:5]] == list(CAPABILITIES)
    for r in rows:
        assert r.images[0].size == (48, 48) and r.images[0].mode == "RGB"
        assert len(r.choices) == 4 and len(set(r.choices)) == 4
        assert r.choices[r.label] == r.response
        assert r.image_names == [r.source.replace("synthetic:", "synthetic/").replace(":", "/") + ".png"]


def test_synthetic_colour_picture_shows_its_colour():
    for i in range(0, 40, 5):  # every 5th row is a colour question
        row = synthetic_example("train", i)
        pixels = _pixels(row).reshape(-1, 3).astype(int)
        target = np.array(COLOURS[row.response])
        assert (np.abs(pixels - target).sum(1) < 10).sum() > 30, row.response


def test_unknown_split_and_capability_are_errors():
    with pytest.raises(NexusError, match="unknown synthetic split"):
        synthetic_example("test", 0)
    with pytest.raises(NexusError, match="unknown synthetic capabilities"):
        synthetic_examples("train", 2, capabilities=("smell",))


def _folder(tmp_path, rows):
    Image.new("RGB", (20, 10), "red").save(tmp_path / "red.png")
    Image.new("RGB", (10, 10), "blue").save(tmp_path / "blue.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    full = tmp_path / "full.png"
    Image.new("RGB", (64, 64), "green").save(full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[:60])
    (tmp_path / "notes.txt").write_text("not an image")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_folder_loader_skips_bad_rows_with_one_warning_each(tmp_path, caplog):
    rows = [
        {"image": "red.png", "prompt": "Colour?", "response": "red", "capability": "colour"},
        {
            "images": ["red.png", "blue.jpg"],
            "prompt": "<image> vs <image>: which is red?",
            "response": "first",
        },
        {"image": "missing.png", "prompt": "p", "response": "r"},
        {"image": "corrupt.png", "prompt": "p", "response": "r"},
        {"image": "truncated.png", "prompt": "p", "response": "r"},
        {"image": "notes.txt", "prompt": "p", "response": "r"},
        {"image": "red.png", "prompt": "no response"},
        {"images": ["red.png"], "prompt": "<image><image>", "response": "r"},
        {
            "image": str(tmp_path / "blue.jpg"),
            "prompt": "Pick",
            "response": "blue",
            "choices": ["red", "blue"],
            "label": 1,
        },
    ]
    data = _folder(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="nexus.multimodal.data"):
        examples = load_image_rows(tmp_path)  # the folder: its one JSONL
    assert [e.response for e in examples] == ["red", "first", "blue"]
    assert [len(e.images) for e in examples] == [1, 2, 1]
    assert examples[0].capability == "colour" and examples[1].capability == "general"
    assert examples[2].choices == ["red", "blue"] and examples[2].label == 1
    per_row = [r for r in caplog.records if "row skipped" in r.getMessage()]
    assert len(per_row) == 6
    assert {int(r.getMessage().split(":")[1]) for r in per_row} == {3, 4, 5, 6, 7, 8}
    assert any("not found" in r.getMessage() for r in per_row)
    assert any("unreadable" in r.getMessage() for r in per_row)
    assert str(data) in per_row[0].getMessage()


def test_empty_or_all_bad_data_is_one_line_error(tmp_path):
    data = _folder(tmp_path, [{"image": "missing.png", "prompt": "p", "response": "r"}])
    with pytest.raises(NexusError, match=r"no usable image-text rows \(1 skipped") as info:
        load_image_rows(data)
    assert "\n" not in str(info.value)
    data.write_text("")
    with pytest.raises(NexusError, match="no usable image-text rows"):
        load_image_rows(data)
    with pytest.raises(NexusError, match="not found"):
        load_image_rows(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(NexusError, match="holds no JSONL"):
        load_image_rows(empty)


def test_load_vision_data_and_split(tmp_path):
    assert len(load_vision_data("synthetic", split="heldout", n=7)) == 7
    rows = synthetic_examples("train", 10)
    train, held = split_rows(rows, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8
    assert {r.source for r in train}.isdisjoint({r.source for r in held})
    assert split_rows(rows, 0.2, seed=0)[1][0].source == held[0].source
