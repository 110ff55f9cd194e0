"""Depth-pruned students: same family, kept layers in order, plain-transformers round trip."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from nexus.errors import NexusError
from nexus.models import build_student, decoder_layers, load_model, save_student

IDS = torch.tensor([[1, 17, 42, 99, 5, 23, 64, 8]])


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_keeping_all_layers_reproduces_teacher(fixture, request):
    teacher, _ = load_model(str(request.getfixturevalue(fixture)))
    student = build_student(teacher, [0, 1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(student(IDS).logits, teacher(IDS).logits, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_pruned_student_round_trips_through_plain_transformers(family, tiny_tokenizer, tmp_path):
    import tiny

    teacher = tiny.build_model(family, tiny_tokenizer, num_layers=4)
    student = build_student(teacher, [0, 2, 3], teacher_name="tiny")
    assert type(student) is type(teacher)
    assert [layer.self_attn.layer_idx for layer in decoder_layers(student)] == [0, 1, 2]
    # the student owns its weights: training it must not touch the teacher
    assert (
        decoder_layers(student)[1].mlp.up_proj.weight.data_ptr()
        != decoder_layers(teacher)[2].mlp.up_proj.weight.data_ptr()
    )
    save_student(student, tmp_path / "student", tiny_tokenizer)
    sidecar = json.loads((tmp_path / "student" / "nexus_student.json").read_text())
    assert sidecar["keep_layers"] == [0, 2, 3] and sidecar["teacher"] == "tiny"

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 3
    assert reloaded.config.nexus_student["keep_layers"] == [0, 2, 3]
    with torch.no_grad():
        assert torch.allclose(reloaded(IDS).logits, student(IDS).logits, atol=1e-6)
        out = reloaded.generate(
            IDS, max_new_tokens=5, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id
        )
    assert out.shape == (1, IDS.shape[1] + 5)


def test_pruned_layers_equal_teacher_layers(tiny_llama_dir):
    teacher, _ = load_model(str(tiny_llama_dir))
    student = build_student(teacher, [1, 3])
    for s_idx, t_idx in enumerate([1, 3]):
        s_state = decoder_layers(student)[s_idx].state_dict()
        t_state = decoder_layers(teacher)[t_idx].state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([], "empty"),
        ([0, 4], "out of range"),
        ([1, 1, 2], "duplicate"),
        ([-1, 2], "out of range"),
        ([2, 1], "increasing"),
    ],
)
def test_bad_keep_lists(tiny_llama_dir, keep, message):
    teacher, _ = load_model(str(tiny_llama_dir))
    with pytest.raises(NexusError, match=message):
        build_student(teacher, keep)
