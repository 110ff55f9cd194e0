"""scripts/inference.py --image and /image PATH, scripts/benchmark_suite.py on image questions,
with a tiny random LLaVA (what is checked is the plumbing, not the answers)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_vlm
from PIL import Image

from nexus.errors import NexusError
from nexus.inference.chat import chat_loop
from nexus.multimodal.chat import VisionChatSession, is_vision_language

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlm_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    model, processor = tiny_vlm.build_vlm(tiny_tokenizer)
    return tiny_vlm.save_vlm(model, processor, tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return path


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_inference_script_answers_about_an_image(vlm_dir, picture):
    result = _script(
        "inference.py", "--model_path", str(vlm_dir), "--image", str(picture), "--prompt", "What colour?",
        "--max-new-tokens", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded vision-language model" in result.stderr and "photo.png attached" in result.stderr


def test_image_on_a_text_model_and_a_missing_picture_are_one_line_errors(vlm_dir, tiny_llama_dir, tmp_path):
    result = _script(
        "inference.py", "--model_path", str(tiny_llama_dir), "--image", "x.png", "--prompt", "hi"
    )
    assert result.returncode == 2 and "--image needs a vision-language model" in result.stderr
    result = _script(
        "inference.py", "--model_path", str(vlm_dir), "--image", str(tmp_path / "no.png"), "--prompt", "hi"
    )
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_chat_loop_with_image_command(vlm_dir, picture, tmp_path):
    from nexus.multimodal.vlm import load_vlm

    assert is_vision_language(str(vlm_dir)) and not is_vision_language(str(tmp_path))
    model, processor, _ = load_vlm(str(vlm_dir))
    session = VisionChatSession(model, processor, max_new_tokens=3)
    with pytest.raises(NexusError, match="no picture yet"):
        session.respond("What is it?")
    out, info = io.StringIO(), io.StringIO()
    lines = (
        f"/image {tmp_path / 'missing.png'}\n/image {picture}\nWhat colour?\nAnd now?\n/reset\nHello\n/quit\n"
    )
    assert chat_loop(session, stdin=io.StringIO(lines), out=out, info=info) == 0
    assert "photo.png attached (40x30)" in out.getvalue() and "conversation reset" in out.getvalue()
    assert "missing.png not found" in info.getvalue() and "no picture yet" in info.getvalue()
    assert len(session.history) == 0 and session.images == []


def test_benchmark_suite_on_image_questions(vlm_dir, tmp_path):
    result = _script(
        "benchmark_suite.py", "--student", str(vlm_dir), "--teacher", str(vlm_dir), "--limit", "5",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Teacher: ") and lines[1].startswith("Student: ") and lines[2] == "Gap: +0.00%"
    report = (tmp_path / "benchmark_comparison.md").read_text()
    assert "| Image |" in report and "synthetic/heldout/4.png" in report
    data = json.loads((tmp_path / "benchmark_results.json").read_text())
    assert data["items"] == 5 and data["teacher"]["n"] == 5
