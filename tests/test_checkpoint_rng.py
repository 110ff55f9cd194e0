"""Checkpoints carry every rank's RNG states, CUDA's too (issue 14): saved when CUDA is in use,
restored on resume, tolerated when missing or saved with another GPU or process count. The CPU tests stand in for
CUDA with monkeypatched RNG functions; the ``gpu`` test does the real round trip."""

from __future__ import annotations

import logging

import pytest
import tiny
import torch

from nexus.data.formats import Example
from nexus.data.packing import encode_examples, pack_documents
from nexus.trainer import checkpoint as ckpt
from nexus.trainer.loop import Trainer
from nexus.trainer.settings import TrainSettings


def _rows(tokenizer, n: int = 8, seq_len: int = 32):
    examples = [Example(kind="text", source=f"r:{i}", text=f"x{i} = {i} * {i}\n") for i in range(n)]
    return pack_documents(encode_examples(tokenizer, examples), seq_len, pad_id=tokenizer.pad_token_id)


def _trainer(tokenizer, tmp_path, device="cpu"):
    settings = TrainSettings(
        max_steps=2, micro_batch_size=2, lr=1e-3, warmup_steps=0, precision="fp32", device=device,
        eval_every=0, save_every=100, kd_weight=0.0, ce_weight=1.0,
    )  # fmt: skip
    student = tiny.build_model("llama", tokenizer, num_layers=1, intermediate=32, seed=3)
    return Trainer(
        student,
        tokenizer=tokenizer,
        train=_rows(tokenizer),
        heldout=None,
        teacher=None,
        settings=settings,
        out_dir=tmp_path / "out",
        run_config=settings,
        result_hash=settings.result_hash(),
        results_dir=tmp_path / "results",
    )


class FakeCuda:
    """Two GPUs' RNG states, as ``torch.cuda`` would report them."""

    def __init__(self, monkeypatch, count=2):
        self.states = [torch.full((16,), 7 + i, dtype=torch.uint8) for i in range(count)]
        self.restored: dict[int, torch.Tensor] = {}
        self.count = count
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda state, device: self.restored.update({device: state})
        )


def test_checkpoint_saves_and_resume_restores_the_cuda_rng(tiny_tokenizer, tmp_path, monkeypatch, caplog):
    trainer = _trainer(tiny_tokenizer, tmp_path)
    trainer.fit()
    fake = FakeCuda(monkeypatch)
    path = trainer.save_checkpoint()
    state = ckpt.load_trainer_state(path)
    assert [s.tolist() for s in state["rng"][0]["cuda"]] == [s.tolist() for s in fake.states]

    resumed = _trainer(tiny_tokenizer, tmp_path)
    assert resumed.try_resume() == path
    assert sorted(fake.restored) == [0, 1]
    assert all(torch.equal(fake.restored[i], fake.states[i]) for i in range(2))

    fake.restored.clear()  # one GPU fewer on resume: the common one, with a warning
    fake.count = 1
    with caplog.at_level(logging.WARNING, logger="nexus.trainer.checkpoint"):
        _trainer(tiny_tokenizer, tmp_path).try_resume()
    assert sorted(fake.restored) == [0] and "2 GPU(s), this process sees 1" in caplog.text


def test_resume_without_cuda_rng_state_leaves_the_cuda_rng_alone(tiny_tokenizer, tmp_path, monkeypatch):
    trainer = _trainer(tiny_tokenizer, tmp_path)
    trainer.fit()
    path = trainer.save_checkpoint()  # CUDA not initialised here: nothing to save
    state = ckpt.load_trainer_state(path)
    assert state["rng"][0]["cuda"] is None
    # a checkpoint written before per-rank states, and before the CUDA field existed
    (old,) = state.pop("rng")
    state.update(rng_torch=old["torch"], rng_python=old["python"])
    torch.save(state, path / "trainer_state.pt")
    fake = FakeCuda(monkeypatch)
    torch.manual_seed(1234)
    assert _trainer(tiny_tokenizer, tmp_path).try_resume() == path
    assert fake.restored == {} and torch.equal(torch.get_rng_state(), old["torch"])


def test_each_rank_restores_its_own_rng_state(caplog):
    """A DDP checkpoint holds one state per rank (gathered at save); rank r resumes from its own."""
    states = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        states.append(ckpt.rng_state())
    for rank, seed in enumerate((11, 22)):
        ckpt.restore_rng({"rng": states}, rank, 2)
        torch.manual_seed(seed)
        expected = torch.rand(3)
        ckpt.restore_rng({"rng": states}, rank, 2)
        assert torch.equal(torch.rand(3), expected)
    with caplog.at_level(logging.WARNING, logger="nexus.trainer.checkpoint"):
        ckpt.restore_rng({"rng": states}, 0, 3)  # resumed on another process count: warned
    assert "RNG states of 2 process(es), this run has 3" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_round_trip_on_gpu(tiny_tokenizer, tmp_path):
    torch.cuda.init()
    trainer = _trainer(tiny_tokenizer, tmp_path, device="cuda")
    trainer.fit()
    path = trainer.save_checkpoint()
    want = torch.rand(4, device="cuda")  # what the RNG gives right after the checkpoint
    torch.rand(1000, device="cuda")  # move it on
    resumed = _trainer(tiny_tokenizer, tmp_path, device="cuda")
    assert resumed.try_resume() == path
    assert torch.equal(torch.rand(4, device="cuda"), want)
