"""Shared fixtures: tiny random models (Llama, Qwen2) with a tiny real tokenizer, all offline."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402  (tests/ is on sys.path through pytest's rootdir insertion)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def checkout_reachable_by_other_users():
    """Tests that run code as an unprivileged account (uid 65534, through setpriv, when the suite
    runs as root) import this checkout's ``src/`` and ``.venv``. A fresh clone in a private folder
    (``mktemp -d`` makes it 0700) is out of that account's reach, so as root grant search
    permission (o+x: enter, not list) on such ancestors for the session, and restore their modes."""
    changed = []
    if os.geteuid() == 0:
        for folder in [REPO, *REPO.parents]:
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(folder, mode | stat.S_IXOTH)
                changed.append((folder, mode))
    yield
    for folder, mode in changed:
        os.chmod(folder, mode)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    model = tiny.build_model("llama", tiny_tokenizer, num_layers=4)
    return tiny.save_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    model = tiny.build_model("qwen2", tiny_tokenizer, num_layers=4, seed=1, tie=False)
    return tiny.save_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
