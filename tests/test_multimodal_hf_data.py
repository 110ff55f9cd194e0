"""Image-text rows from Hugging Face datasets (``data: hf:NAME[:SPLIT]``), read through a fake
``datasets`` module (the library is not a test dependency): PIL-image, bytes-dict and path
columns, several images per row, LLaVA / chat-message conversations, bad rows warned about and
skipped, an empty set and a missing library refused in one line."""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from types import SimpleNamespace

import pytest
from PIL import Image

from nexus.errors import NexusError
from nexus.multimodal.data import accuracy_examples, load_image_rows, load_vision_data, training_examples


def _png(colour: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _pil(colour: str, mode: str = "RGB") -> Image.Image:
    return Image.open(io.BytesIO(_png(colour, mode)))  # as datasets.Image decodes: lazily, from a file


class _Dataset:
    """Rows by index, like ``datasets.Dataset``; an Exception in the rows is raised on access
    (the library decoding a bad picture)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(self.rows[i], Exception):
            raise self.rows[i]
        return self.rows[i]


@pytest.fixture
def hub(monkeypatch):
    """``hub(rows)`` installs a fake ``datasets`` serving ``rows``; the calls are recorded."""
    calls = []

    def install(rows):
        def load_dataset(name, config=None, split=None, data_files=None):
            calls.append(dict(name=name, config=config, split=split, data_files=data_files))
            return _Dataset(rows)

        monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
        return calls

    return install


def test_plain_columns_with_pil_images(hub):
    calls = hub(
        [
            {"image": _pil("red", "RGBA"), "prompt": "Colour?", "response": "red", "capability": "colour"},
            {
                "image": _pil("blue", "L"),
                "prompt": "Pick",
                "response": "blue",
                "choices": ["red", "blue"],
                "label": 1,
                "capability": None,  # a column other rows fill
            },
        ]
    )
    examples = load_image_rows("hf:someone/pictures:validation")
    assert calls == [dict(name="someone/pictures", config=None, split="validation", data_files=None)]
    assert [e.response for e in examples] == ["red", "blue"]
    assert all(e.images[0].mode == "RGB" and e.images[0].size == (12, 8) for e in examples)
    assert examples[0].images[0].getpixel((0, 0)) == (255, 0, 0)
    assert [e.capability for e in examples] == ["colour", "general"]
    assert examples[1].choices == ["red", "blue"] and examples[1].label == 1
    assert examples[0].image_names == ["someone/pictures[validation]:1"]
    assert examples[1].source == "someone/pictures[validation]:2"
    load_image_rows("hf:someone/pictures")
    assert calls[-1]["split"] == "train"


def test_bytes_dict_and_path_images(hub, tmp_path):
    Image.new("RGB", (5, 5), "green").save(tmp_path / "green.png")
    hub(
        [
            {"image": {"bytes": _png("red"), "path": "red.png"}, "prompt": "a", "response": "red"},
            {
                "image": {"bytes": None, "path": str(tmp_path / "green.png")},
                "prompt": "b",
                "response": "green",
            },
            {"image": str(tmp_path / "green.png"), "prompt": "c", "response": "green"},
        ]
    )
    examples = load_image_rows("hf:x")
    assert [e.images[0].getpixel((0, 0)) for e in examples] == [(255, 0, 0), (0, 128, 0), (0, 128, 0)]
    assert examples[0].image_names == ["red.png"]
    assert examples[1].image_names == [str(tmp_path / "green.png")]


def test_several_images_per_row(hub):
    hub(
        [
            {
                "images": [_pil("red"), _pil("blue")],
                "prompt": "<image> or <image>: which is red?",
                "response": "first",
            },
            {
                "images": [_pil("red"), _pil("blue")],
                "image": None,
                "prompt": "Which is blue?",
                "response": "second",
            },
        ]
    )
    examples = load_image_rows("hf:x")
    assert [len(e.images) for e in examples] == [2, 2]
    assert examples[0].images[1].getpixel((0, 0)) == (0, 0, 255)
    assert examples[0].image_names == ["x[train]:1#1", "x[train]:1#2"]


def test_conversation_rows_llava_and_chat_messages(hub, tmp_path):
    hub(
        [
            {  # LLaVA-Instruct
                "image": _pil("red"),
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the picture?"},
                    {"from": "gpt", "value": "Red."},
                    {"from": "human", "value": "Are you sure?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            },
            {  # TRL's vision SFT rows (llava-instruct-mix-vsft): content parts, a list of images
                "images": [_pil("red"), _pil("blue")],
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Be brief.", "index": None}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "text": None, "index": 0},
                            {"type": "text", "text": " vs ", "index": None},
                            {"type": "image", "text": None, "index": 1},
                            {"type": "text", "text": ": which is blue?", "index": None},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": "The second.", "index": None}],
                    },
                ],
            },
            {  # plain-string chat content, no markers: the image goes first
                "image": _pil("blue"),
                "messages": [
                    {"role": "user", "content": "Colour?"},
                    {"role": "assistant", "content": "blue"},
                ],
            },
        ]
    )
    first, second, third = load_image_rows("hf:x")
    assert (first.prompt, first.response) == ("<image>What colour is the picture?", "Red.")
    assert (second.prompt, second.response) == ("<image> vs <image>: which is blue?", "The second.")
    assert len(second.images) == 2
    assert (third.prompt, third.response) == ("Colour?", "blue")
    # the same conversation form in a user's JSON file (LLaVA-Instruct's own layout)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "r.png")
    (tmp_path / "llava.json").write_text(
        json.dumps(
            [
                {
                    "id": "1",
                    "image": "r.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nColour?"},
                        {"from": "gpt", "value": "red"},
                    ],
                }
            ]
        )
    )
    [row] = load_image_rows(tmp_path / "llava.json")
    assert (row.prompt, row.response, row.image_names) == ("<image>Colour?", "red", ["r.png"])


def test_bad_rows_are_skipped_with_one_warning_each(hub, caplog):
    good = {"image": _pil("red"), "prompt": "p", "response": "r"}
    hub(
        [
            good,
            {"image": None, "prompt": "p", "response": "r"},  # no image
            {
                "image": {"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None},
                "prompt": "p",
                "response": "r",
            },
            {
                "image": {"bytes": _png("red")[:40], "path": "cut.png"},
                "prompt": "p",
                "response": "r",
            },  # truncated
            OSError("image file is truncated"),  # the library fails decoding this row
            {"image": _pil("red"), "prompt": "p"},  # no response
            {"image": _pil("red"), "conversations": [{"from": "human", "value": "<image>\nhi"}]},  # no answer
            {
                "image": _pil("red"),
                "messages": [
                    {"role": "user", "content": [{"type": "video"}]},
                    {"role": "assistant", "content": "r"},
                ],
            },
            {"images": [_pil("red")], "prompt": "<image> and <image>", "response": "r"},  # markers vs images
            {"image": 42, "prompt": "p", "response": "r"},
            good,
        ]
    )
    with caplog.at_level(logging.WARNING, logger="nexus.multimodal.data"):
        examples = load_image_rows("hf:x:test")
    assert len(examples) == 2
    per_row = [r.getMessage() for r in caplog.records if "row skipped" in r.getMessage()]
    assert len(per_row) == 9
    assert [m.split(":")[1] for m in per_row] == [str(i) for i in range(2, 11)]
    assert all(m.startswith("x[test]:") for m in per_row)
    assert "unreadable" in per_row[1] and "cut.png" in per_row[2] and "OSError" in per_row[3]
    assert "missing 'response'" in per_row[4] and "no user turn followed by an assistant turn" in per_row[5]
    assert any("hf:x:test: 9 of 11 rows skipped" in r.getMessage() for r in caplog.records)


def test_all_bad_rows_and_no_rows_are_one_line_errors(hub):
    hub([{"image": None, "prompt": "p", "response": "r"}, {"image": _pil("red")}])
    with pytest.raises(NexusError, match=r"hf:x has no usable image-text rows \(2 skipped") as info:
        load_image_rows("hf:x")
    assert "\n" not in str(info.value)
    hub([])
    with pytest.raises(NexusError, match="hf:x has no usable image-text rows$"):
        load_image_rows("hf:x")


def test_missing_library_or_dataset_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(NexusError, match=r"needs the 'datasets' package \(pip install datasets\)") as info:
        load_vision_data("hf:someone/pictures")
    assert "\n" not in str(info.value) and "hf:someone/pictures" in str(info.value)

    def load_dataset(name, config=None, split=None, data_files=None):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nor cannot be accessed.")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        NexusError, match=r"cannot load dataset 'nope' \(split 'train'\): Dataset 'nope'"
    ) as info:
        load_image_rows("hf:nope")
    assert "\n" not in str(info.value)


def test_phases_and_benchmark_read_hub_data(hub):
    from nexus.multimodal.config import VisionProfileConfig
    from nexus.multimodal.profile import probe_examples

    rows = [
        {
            "image": _pil("red"),
            "prompt": f"q{i}",
            "response": f"a{i}",
            "capability": "even" if i % 2 == 0 else "odd",
        }
        for i in range(10)
    ]
    hub(rows)
    assert [e.prompt for e in load_vision_data("hf:x", n=3)] == ["q0", "q1", "q2"]
    settings = SimpleNamespace(
        data="hf:x", seed=0, image_size=64, eval_rows=5, train_rows=100, heldout_rows=5
    )
    held = accuracy_examples(settings)  # the benchmark's --image-data goes through this too
    train, train_held = training_examples(settings)
    assert len(held) == 1 and len(train) == 9
    assert {e.prompt for e in train}.isdisjoint(e.prompt for e in held)
    assert [e.prompt for e in train_held] == [e.prompt for e in held]
    probes = probe_examples(VisionProfileConfig(data="hf:x", num_probes=2))
    assert {k: [e.prompt for e in v] for k, v in probes.items()} == {
        "even": ["q0", "q2"],
        "odd": ["q1", "q3"],
    }
