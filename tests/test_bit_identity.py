"""Bit-identity of phases 2-4 against weights recorded before the training-engine refactor.

A few optimizer steps of each training phase on tiny random models (distill with a live teacher
and anchoring, distill from a cached teacher, train, router with the domain warm-up) must give
*exactly* the student tensors, losses and held-out metrics recorded in
``tests/assets/bit_identity/reference.json`` by the code before the refactor (commit
"tests: bit-identity reference ..."). Floating-point results depend on the CPU's kernels and
the torch build, so the comparison runs only where the reference was recorded (same torch
version and CPU model) and is skipped elsewhere; regenerate the reference on a new machine
*from the pre-refactor commit* with ``python tests/test_bit_identity.py --record``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets" / "bit_identity"
REFERENCE = ASSETS / "reference.json"
TOKENIZER = ASSETS / "tokenizer"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def platform_key() -> dict[str, str]:
    # the vector ISA torch dispatches to (AVX2 / AVX512 / AMX) changes float summation order:
    # two "AMD EPYC" machines differ in the 7th digit of a KD loss when one lacks AVX-512
    return {
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }


def _tensor_hashes(model_dir: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    return {
        k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for k, v in sorted(state.items())
    }


def _losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "split", "loss", "kd", "ce", "anchor", "extra", "kd_topk", "top1_agreement")
    # the step-0 evaluation (the phase's starting point) came after the reference was recorded;
    # it trains nothing, which the equal weights and later losses show
    return [
        {k: r[k] for k in keep if k in r}
        for r in rows
        if r["split"] == "train" or (r["split"] == "eval" and r["step"] > 0)
    ]


def _write_data(root: Path) -> tuple[Path, Path]:
    text = root / "text.jsonl"
    rows = [{"text": f"def f{i}(x):\n    return x * {i} + {i % 3}\n"} for i in range(16)]
    rows += [
        {"question": f"What is {i} plus {i + 2}?", "answer": f"{i} + {i + 2} = {2 * i + 2}"}
        for i in range(24)
    ]
    text.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import tiny

    mix = tiny.write_domain_mix(root / "mix.jsonl")
    return text, mix


def run_phases(root: Path) -> dict:
    """Run the four short trainings under ``root``; their hashes, losses and summaries."""
    import tiny
    from transformers import AutoTokenizer

    from nexus.distillation.config import DistillConfig
    from nexus.distillation.run import run_distill
    from nexus.router.config import RouterConfig
    from nexus.router.run import run_router
    from nexus.training.config import TrainConfig
    from nexus.training.run import run_train

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    teacher = tiny.save_model(
        tiny.build_model("llama", tok, num_layers=3, intermediate=96, seed=0), tok, root / "teacher"
    )
    student = tiny.save_model(
        tiny.build_model("llama", tok, num_layers=2, intermediate=96, seed=1), tok, root / "student"
    )
    text, mix = _write_data(root)
    results = root / "results"
    common = {"teacher": str(teacher), "seq_len": 64, "micro_batch_size": 2, "max_steps": 3, "device": "cpu"}
    book = {"save_every": 2, "eval_every": 2, "eval_max_rows": 4}
    runs = {
        # phase 2 defaults (warm-up 20, lr 2e-4), anchoring on, live teacher, bf16 where the CPU has it
        "distill_live": lambda out: run_distill(
            DistillConfig(
                **common,
                **book,
                data=[str(text)],
                student_layers=2,
                anchor_weight=0.1,
                grad_accum=2,
                out=str(out),
            ),
            results_dir=results,
        ),
        "distill_cached": lambda out: run_distill(
            DistillConfig(
                **common,
                **book,
                data=[str(text)],
                student_layers=2,
                cache_teacher=True,
                topk=16,
                precision="fp32",
                temperature=2.0,
                out=str(out),
            ),
            results_dir=results,
        ),
        "train": lambda out: run_train(
            TrainConfig(
                **common, **book, student=str(student), data=[str(mix)], precision="fp32", out=str(out)
            ),
            results_dir=results,
        ),
        "router": lambda out: run_router(
            RouterConfig(
                **common,
                **book,
                student=str(student),
                data=[str(mix)],
                precision="fp32",
                mode="split",  # the mode the reference was recorded with (the default became copy)
                domain_warmup_steps=2,
                calibration_tokens=256,
                out=str(out),
            ),
            results_dir=results,
        ),
    }
    record: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in a fixed order, whatever the core count
    try:
        for name, run in runs.items():
            out = root / name
            summary = run(out)
            record[name] = {
                "tensors": _tensor_hashes(out / "model"),
                "metrics": _losses(out),
                "loss": summary["loss"],
                "eval": summary["eval"],
            }
    finally:
        torch.set_num_threads(threads)
    return record


def config_snapshot() -> dict:
    """Every phase config's default values and result hash: the YAML keys and resume hashes."""
    from nexus.config import to_dict
    from nexus.distillation.config import DistillConfig
    from nexus.router.config import RouterConfig
    from nexus.training.config import TrainConfig

    configs = {"distill": DistillConfig(), "train": TrainConfig(), "router": RouterConfig()}
    return {name: {"defaults": to_dict(c), "hash": c.result_hash()} for name, c in configs.items()}


def test_phase_configs_keep_their_keys_defaults_and_result_hashes():
    assert config_snapshot() == json.loads(REFERENCE.read_text())["configs"]


def test_share_default_depth_resumes_with_the_hash_of_the_old_default():
    """student_layers' default became the share 2/3; runs hash it resolved for their teacher, and
    for the 30-layer default teacher that is the old default 20 and its recorded hash."""
    from nexus.distillation.config import DistillConfig

    assert DistillConfig().resolved(30).result_hash() == "fb31aaad389cffcd"


def test_phases_are_bit_identical_to_the_pre_refactor_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    if reference["platform"] != platform_key():
        pytest.skip(f"reference recorded on {reference['platform']}, this is {platform_key()}")
    got = run_phases(tmp_path)
    for name, want in reference["runs"].items():
        assert got[name]["metrics"] == want["metrics"], name
        assert got[name]["eval"] == want["eval"], name
        assert got[name]["loss"] == want["loss"], name
        changed = [k for k in want["tensors"] if got[name]["tensors"].get(k) != want["tensors"][k]]
        assert not changed and set(got[name]["tensors"]) == set(want["tensors"]), (name, changed[:5])


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    if not TOKENIZER.is_dir():
        tiny.build_tokenizer(TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_phases(Path(tmp))
    REFERENCE.write_text(
        json.dumps(
            {"platform": platform_key(), "configs": config_snapshot(), "runs": runs}, indent=1, sort_keys=True
        )
        + "\n"
    )
    print(f"wrote {REFERENCE}")
