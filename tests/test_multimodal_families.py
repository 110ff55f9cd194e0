"""The multimodal pipeline on tiny random VLMs of the families besides LLaVA (whose run is in
test_multimodal_pipeline.py): Idefics3 (SmolVLM's class) and Gemma 3 through every phase of the
CLI into a release that plain transformers loads and that gives the saved student's logits;
Qwen2-VL's model side (3-D rotary positions from ``image_grid_thw`` and ``mm_token_type_ids``
travelling with each row) in-process, and its processor's torchvision requirement as a one-line
error where torchvision is missing (its processor cannot be built without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_vlm
import torch

from nexus.models import build_student, decoder_layers
from nexus.multimodal.rows import encode_rows
from nexus.multimodal.synthetic import synthetic_examples
from nexus.multimodal.vlm import encode
from nexus.trainer.teacher import model_inputs


def _config(tmp: Path, teacher: Path) -> Path:
    common = {
        "image_size": 16,
        "train_rows": 6,
        "heldout_rows": 2,
        "micro_batch_size": 2,
        "warmup_steps": 1,
        "save_every": 2,
        "eval_rows": 3,
    }
    sections = {
        "profile": {"image_size": 16, "num_probes": 1, "eval_rows": 3, "plan": {"keep_layers": 3}},
        "distill": {**common, "max_steps": 2},
        "train": {**common, "max_steps": 1},
        "router": {**common, "max_steps": 1, "num_experts": 5, "calibration_tokens": 128},
        "release": {"image_size": 16, "eval_rows": 3},
    }  # fmt: skip
    return tiny_vlm.write_config(tmp, teacher, sections)


_nexus = tiny_vlm.nexus


def _logits(model, processor, examples) -> torch.Tensor:
    batch = encode(processor, examples)
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("family", ["idefics3", "gemma3"])
def test_family_through_every_phase_into_a_loadable_release(family, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from nexus.router.experts import dense_only_reason
    from nexus.trainer.evaluate import heldout_kd

    teacher, processor = tiny_vlm.FAMILIES[family](tiny_tokenizer)
    teacher_dir = tiny_vlm.save_vlm(teacher, processor, tmp_path / "teacher")
    result = _nexus("multimodal", "run", "--config", str(_config(tmp_path, teacher_dir)))
    assert result.returncode == 0, result.stderr[-3000:]
    for number, phase in enumerate(("Profile", "Distill", "Train", "Router", "Release"), start=1):
        assert f"[Phase {number}: {phase}] done" in result.stderr
    results = tmp_path / "results"

    # the pruned language tower: the plan's layers, each keeping its attention type (Gemma 3)
    keep = json.loads((results / "mm_profile" / "student_plan.json").read_text())["keep_layers"]
    assert len(keep) == 3
    dense = AutoModelForImageTextToText.from_pretrained(results / "mm_train" / "model").eval()
    assert type(dense) is type(teacher) and len(decoder_layers(dense)) == 3
    assert dense.config.get_text_config().num_hidden_layers == 3
    teacher_types = getattr(teacher.config.get_text_config(), "layer_types", None)
    if family == "gemma3":
        assert dense.config.get_text_config().layer_types == [teacher_types[i] for i in keep]
        for layer, index in zip(decoder_layers(dense), keep, strict=True):
            assert layer.self_attn.layer_type == teacher_types[index]
            assert layer.self_attn.sliding_window == (
                4 if teacher_types[index] == "sliding_attention" else None
            )

    # phase 4: a standard transformers MoE that is the dense student at step 0, or the dense
    # student kept with a one-line reason
    router = json.loads((results / "mm_router" / "summary.json").read_text())
    text_type = teacher.config.get_text_config().model_type
    reason = dense_only_reason(text_type)
    if reason is None:
        assert heldout_kd(router["init_eval"]) == pytest.approx(heldout_kd(router["dense_eval"]), abs=1e-4)
        routed = AutoModelForImageTextToText.from_pretrained(results / "mm_router" / "model")
        assert type(routed) is type(teacher) and routed.config.get_text_config().model_type == "mixtral"
        assert len(decoder_layers(routed)) == 3
    else:
        assert router["kept_dense"] == reason and "\n" not in reason
        assert "Router] " + reason in result.stderr
        assert not (results / "mm_router" / "model").exists()

    # the release: plain transformers, the saved student's logits
    release = tmp_path / "release"
    manifest = json.loads((release / "nexus_manifest.json").read_text())
    assert manifest["student_layers"] == 3 and manifest["teacher_layers"] == len(decoder_layers(teacher))
    shipped = AutoModelForImageTextToText.from_pretrained(manifest["student"]).eval()
    loaded = AutoModelForImageTextToText.from_pretrained(release).eval()
    loaded_processor = AutoProcessor.from_pretrained(release)
    assert type(loaded) is type(teacher) and type(loaded_processor) is type(processor)
    examples = synthetic_examples("heldout", 2, size=16)
    assert torch.allclose(
        _logits(loaded, loaded_processor, examples), _logits(shipped, processor, examples), atol=1e-5
    )


@pytest.fixture
def qwen2_vl_pair(tiny_tokenizer, monkeypatch):
    """A tiny Qwen2-VL and its processor; without torchvision the processor is built with no
    video processor (transformers' class check patched for this test only: pictures never reach
    the video processor, but saving and AutoProcessor need one)."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    if transformers.is_torchvision_available():
        return tiny_vlm.build_qwen2_vl(tiny_tokenizer, video_processor=tiny_vlm.qwen2_vl_video_processor())
    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, value: None if name == "video_processor" else check(self, name, value),
    )
    return tiny_vlm.build_qwen2_vl(tiny_tokenizer)


def test_qwen2_vl_rows_carry_grid_and_token_types_and_prune(qwen2_vl_pair, tmp_path):
    """Batches of rows give each row the logits it has alone (its picture's grid, its token types
    and the 3-D positions the model derives from them, whatever the padding); the pruned student
    reloads with plain transformers and keeps the dense student in phase 4, saying why."""
    from transformers import AutoModelForImageTextToText

    from nexus.multimodal.profile import encode_probe_set
    from nexus.profiling.engine import LayerRunner, make_batches, naive_sequence_logprobs
    from nexus.router.experts import dense_only_reason

    model, processor = qwen2_vl_pair
    examples = synthetic_examples("train", 3, size=16)
    batch = encode_rows(processor, examples).batch([0, 1, 2])
    assert {"image_grid_thw", "mm_token_type_ids"} <= set(model_inputs(batch))
    assert "position_ids" not in batch
    with torch.no_grad():
        together = model(**model_inputs(batch)).logits
    for row, example in enumerate(examples):
        alone = _logits(model, processor, [example])[0]
        assert torch.allclose(together[row, : len(alone)], alone, atol=1e-5)

    probes = encode_probe_set(processor, "colour", synthetic_examples("dev", 2, size=16))
    (probe_batch,) = make_batches(probes.sequences, batch_tokens=4096, pad_id=0, device=torch.device("cpu"))
    runner = LayerRunner(model)
    fast, _ = runner.sequence_logprobs(runner.clean_pass(probe_batch).inputs[-1], probe_batch)
    assert torch.allclose(fast, naive_sequence_logprobs(model, probe_batch)[0], atol=1e-4)

    student = build_student(model, [0, 3])
    student.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert len(decoder_layers(loaded)) == 2 and loaded.config.text_config.num_hidden_layers == 2
    assert torch.allclose(
        _logits(loaded, processor, examples[:2]), _logits(student, processor, examples[:2]), atol=1e-5
    )
    reason = dense_only_reason(model.config.get_text_config().model_type)
    assert reason and "\n" not in reason


def test_qwen2_vl_teacher_without_torchvision_is_a_one_line_error(tiny_tokenizer, tmp_path):
    import transformers

    if transformers.is_torchvision_available():
        pytest.skip("torchvision is installed: Qwen2-VL processors can be built")
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config={"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 1, "patch_size": 4},
    )  # fmt: skip
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path / "teacher")
    result = _nexus(
        "multimodal", "run", "--config", str(_config(tmp_path, tmp_path / "teacher")), "--only", "profile"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "torchvision" in x]
    assert "'qwen2_vl' model" in line and "Qwen2VLProcessor" in line and "pip install torchvision" in line
