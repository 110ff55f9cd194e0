"""Phase 4 of the multimodal pipeline on a tiny random LLaVA: the language tower copy-upcycled into
a Mixtral tower is exactly the dense student at step 0, reloads with plain transformers with the
same logits, its routers are read the same way as a text MoE's, and the release's rule for
shipping the routed student."""

from __future__ import annotations

import pytest
import tiny
import tiny_vlm
import torch

from nexus.multimodal.config import VisionRouterConfig
from nexus.multimodal.release import at_least_as_good
from nexus.multimodal.router import router_rows
from nexus.router.experts import dense_to_moe, moe_layout
from nexus.router.objective import RouterLogits, routing_report
from nexus.router.run import upcycle
from nexus.trainer.teacher import LiveTeacherSource, base_model, model_inputs


@pytest.fixture(scope="module")
def tiny_vlm_pair(tiny_tokenizer):
    return tiny_vlm.build_vlm(tiny_tokenizer)


def _config(**overrides) -> VisionRouterConfig:
    values = {
        "image_size": 16,
        "train_rows": 10,
        "heldout_rows": 5,
        "calibration_tokens": 256,
        "device": "cpu",
    }
    return VisionRouterConfig(**{**values, **overrides})


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch), use_cache=False).logits


def test_copy_upcycled_vlm_is_the_dense_student_at_step_zero_and_reloads(
    tiny_vlm_pair, tiny_tokenizer, tmp_path
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dense, processor = tiny_vlm_pair
    teacher, _ = tiny_vlm.build_vlm(tiny_tokenizer, seed=1)
    config = _config()
    data = router_rows(config, processor)
    assert data.train.domains == ("colour", "count", "position", "shape", "text")
    source = LiveTeacherSource(teacher)
    routed, dense_eval = upcycle(config, dense, data, processor.tokenizer, source, "cpu")
    assert type(routed) is type(dense) and routed.config.text_config.model_type == "mixtral"
    layout = moe_layout(routed)
    assert layout.num_experts == 5 and layout.expert_names == list(data.train.domains)
    assert dense_eval["tokens"] > 0
    batch = data.heldout.batch(range(len(data.heldout)))
    assert torch.allclose(_logits(routed, batch), _logits(dense, batch), atol=1e-5)
    # the routers start as capability classifiers: on the calibration rows, capability i's tokens
    # go mostly to expert i (chance: 1/5)
    report = routing_report(
        routed,
        data.train,
        layers=layout.expert_layers,
        num_experts=5,
        top_k=1,
        domains=data.train.domains,
        pad_id=processor.tokenizer.pad_token_id,
    )
    load = report.load()
    assert len(report.used_domains()) == 5
    assert torch.stack([load[d][d] for d in range(5)]).mean() > 0.5

    tiny_vlm.save_vlm(routed, processor, tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.model.language_model).__name__ == "MixtralModel"
    assert loaded.config.nexus_moe["expert_names"] == layout.expert_names
    assert torch.equal(_logits(loaded, batch), _logits(routed, batch))


def test_router_logits_are_read_the_same_from_a_vlm_and_a_text_moe(tiny_vlm_pair, tiny_tokenizer):
    dense, processor = tiny_vlm_pair
    routed = dense_to_moe(dense, num_experts=3, top_k=1, mode="copy", router_init_std=1.0)
    batch = router_rows(_config(), processor).train.batch([0, 1])
    capture = RouterLogits(routed, range(4))
    with torch.no_grad():
        base_model(routed)(**model_inputs(batch), use_cache=False)
    logits = capture.pop()
    assert len(logits) == 4 and logits[0].shape == (batch["input_ids"].numel(), 3)
    # a text MoE: the capture equals what transformers returns with output_router_logits=True
    text = dense_to_moe(
        tiny.build_model("llama", tiny_tokenizer, num_layers=2), num_experts=3, router_init_std=1.0
    )
    capture = RouterLogits(text, [0, 1])
    ids = batch["input_ids"][:, :20].clamp_max(len(tiny_tokenizer) - 1)
    with torch.no_grad():
        out = base_model(text)(input_ids=ids, use_cache=False, output_router_logits=True)
    captured = capture.pop()
    assert len(captured) == 2 and all(
        torch.equal(a, b) for a, b in zip(captured, out.router_logits, strict=True)
    )
    with torch.no_grad():  # each forward starts a new list
        base_model(text)(input_ids=ids, use_cache=False)
    assert len(capture.pop()) == 2
    capture.remove()


@pytest.mark.parametrize(
    ("routed", "dense", "ships"),
    [
        ({"exact_match": 0.5, "multiple_choice": 0.7}, {"exact_match": 0.5, "multiple_choice": 0.7}, True),
        ({"exact_match": 0.6, "multiple_choice": 0.7}, {"exact_match": 0.5, "multiple_choice": 0.6}, True),
        ({"exact_match": 0.6, "multiple_choice": 0.5}, {"exact_match": 0.5, "multiple_choice": 0.6}, False),
        ({"exact_match": 0.4, "multiple_choice": None}, {"exact_match": 0.5, "multiple_choice": None}, False),
        ({"exact_match": 0.5, "multiple_choice": None}, {"exact_match": 0.5, "multiple_choice": None}, True),
    ],
)
def test_the_routed_student_ships_only_when_at_least_as_good(routed, dense, ships):
    assert at_least_as_good(routed, dense) is ships
