"""Phase 5 end to end on tiny models: ``run_release`` reads the phases' completion markers and
writes the release (model, knowledge index, manifest, model card)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from transformers import AutoModelForCausalLM

from nexus.monitor import Flags, StatusPrinter
from nexus.monitor.markers import MARKER
from nexus.pipeline.runner import PipelineConfig
from nexus.release.config import MANIFEST, ReleaseConfig
from nexus.release.run import run_release

RAG_DOC = Path(__file__).parent / "assets" / "rag" / "docs" / "veloria.md"


def test_run_release_writes_model_index_manifest_and_card(tiny_llama_dir, tmp_path):
    results = tmp_path / "results"
    distill = results / "distill"
    shutil.copytree(tiny_llama_dir, distill / "model")
    summary = {"step": 3, "eval": {"kd": 0.25, "top1_agreement": 0.5, "ce": 5.0}}
    (distill / "summary.json").write_text(json.dumps(summary))
    marker = {
        "phase": 2,
        "name": "Distill",
        "config_hash": "x",
        "seconds": 1.5,
        "summary": summary,
        "line": "3 steps",
    }
    (distill / MARKER).write_text(json.dumps(marker))
    cfg = ReleaseConfig(
        teacher=str(tiny_llama_dir),
        release_dir=str(tmp_path / "nexus-release-v1"),
        docs=[str(RAG_DOC)],
        index={"chunk_tokens": 48, "chunk_overlap": 12},
        benchmark={"tasks": ["builtin"], "limit": 1, "max_new_tokens": 4, "batch_size": 2, "precision": "fp32",
                   "fidelity_items": 2, "bootstrap_samples": 50},
        profile_student=False, retention={"enabled": False},  # tests/test_retention.py covers it
    )  # fmt: skip
    pipeline = PipelineConfig(distill={"data": ["builtin"]})
    ctx = SimpleNamespace(
        config=pipeline, results_dir=results, flags=Flags(tmp_path / "flags"),
        printer=StatusPrinter(io.StringIO()), source="test.yaml",
    )  # fmt: skip
    out = run_release(cfg, ctx)

    release = tmp_path / "nexus-release-v1"
    assert out["release_dir"] == str(release) and not (tmp_path / "nexus-release-v1.partial").exists()
    assert {"knowledge_index.faiss", "knowledge_docs.json", MANIFEST, "README.md", "config.json"} <= {
        p.name for p in release.iterdir()
    }
    AutoModelForCausalLM.from_pretrained(release)  # plain transformers loads it
    manifest = json.loads((release / MANIFEST).read_text())
    assert manifest["format"] == "nexus-release" and manifest["version"] == 1
    assert manifest["phases"] == [
        {"number": 2, "name": "Distill", "seconds": 1.5, "summary": summary, "line": "3 steps"}
    ]
    assert "the newest phase output (distill)" in manifest["student_choice"]
    assert (
        manifest["configs"]["source"] == "test.yaml"
        and manifest["configs"]["release"]["profile_student"] is False
    )
    assert "builtin" in manifest["data"] and manifest["benchmark"]["items"] == 3
    # the list of documents and the index's count, under separate keys
    assert manifest["knowledge"]["document_count"] == 1 and manifest["knowledge"]["chunks"] > 0
    assert manifest["knowledge"]["documents"] == ["tests/assets/rag/docs/veloria.md"]  # the tree's
    card = (release / "README.md").read_text()
    assert "AutoModelForCausalLM" in card and "nexus_manifest.json" in card
    assert "## Benchmark: teacher vs student" in card and "| builtin-math |" in card
    assert "## How it was made" in card and "3 steps" in card  # the marker's line, in the phase table


def test_run_release_profiles_the_student_through_the_given_profiler(tiny_llama_dir, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(tiny_llama_dir, results / "train" / "model")
    (results / "profile").mkdir(parents=True)
    (results / "profile" / "teacher.json").write_text(
        json.dumps({"config": {"num_probes": 2, "max_tokens": 64}})
    )
    calls = []

    def profiler(values, where):
        calls.append((values, where))
        return {"alignment": {"overall": 0.75}}

    cfg = ReleaseConfig(
        teacher=str(tiny_llama_dir), release_dir=str(tmp_path / "rel"), docs=[str(RAG_DOC)],
        index={"chunk_tokens": 48, "chunk_overlap": 12}, benchmark={"enabled": False},
        retention={"enabled": False},
    )  # fmt: skip
    ctx = SimpleNamespace(
        config=PipelineConfig(), results_dir=results, flags=Flags(tmp_path / "flags"),
        printer=StatusPrinter(io.StringIO()), source="test.yaml",
    )  # fmt: skip
    out = run_release(cfg, ctx, profiler=profiler)
    ((values, where),) = calls
    assert where == "release.student_profile" and values["name"] == "student"
    assert (values["num_probes"], values["max_tokens"]) == (2, 64)  # the teacher profile's sizes
    assert values["compare"] == str(results / "profile" / "teacher.json")
    assert values["model"].endswith("rel.partial")  # the release's own copy is profiled
    assert out["alignment_score"] == 0.75
    assert json.loads((tmp_path / "rel" / MANIFEST).read_text())["alignment"] == {"overall": 0.75}


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_release_manifest_names_no_path_of_the_build_machine(tiny_llama_dir, tmp_path):
    """Item 1 of issue 14: the benchmark report names the release, not its ``.partial`` build
    folder, and the manifest records no absolute path (relative ones, or a name + sha256)."""
    results = tmp_path / "project" / "results"
    shutil.copytree(tiny_llama_dir, results / "distill" / "model")
    (results / "distill" / MARKER).write_text(json.dumps({"phase": 2, "name": "Distill", "seconds": 1.0}))
    teacher = tmp_path / "models" / "teacher"
    shutil.copytree(tiny_llama_dir, teacher)
    doc = tmp_path / "elsewhere" / "notes.md"
    doc.parent.mkdir()
    doc.write_text("# Notes\n\nThe lighthouse of Karsholm was built in 1861 and is painted red and white.\n")
    data_file = tmp_path / "elsewhere" / "rows.jsonl"
    data_file.write_text('{"text": "a row"}\n')
    cfg = ReleaseConfig(
        teacher=str(teacher),
        release_dir=str(tmp_path / "project" / "nexus-release-v1"),
        docs=[str(doc), str(RAG_DOC)],
        index={"chunk_tokens": 48, "chunk_overlap": 12},
        benchmark={"tasks": ["builtin-math"], "limit": 1, "max_new_tokens": 2, "batch_size": 1, "precision": "fp32",
                   "fidelity_items": 1, "bootstrap_samples": 20},
        profile_student=False, retention={"enabled": False},  # tests/test_retention.py covers it
    )  # fmt: skip
    pipeline = PipelineConfig(distill={"data": ["builtin:rag=8", str(data_file)]})
    ctx = SimpleNamespace(
        config=pipeline, results_dir=results, flags=Flags(tmp_path / "flags"),
        printer=StatusPrinter(io.StringIO()), source=str(tmp_path / "project" / "nexus.yaml"),
    )  # fmt: skip
    run_release(cfg, ctx)

    release = tmp_path / "project" / "nexus-release-v1"
    report = (results / "benchmark_comparison.md").read_text()
    assert "Student: `nexus-release-v1`" in report and ".partial" not in report
    bench_json = json.loads((results / "benchmark_results.json").read_text())
    assert bench_json["config"]["student"] == "nexus-release-v1"
    assert ".partial" not in json.dumps(bench_json["models"]["student"])

    manifest = json.loads((release / MANIFEST).read_text())
    leaks = [s for s in _strings(manifest) if s.startswith(("/", str(tmp_path))) or str(tmp_path) in s]
    assert not leaks, leaks
    assert ".partial" not in json.dumps(manifest)
    digest = hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert manifest["data"]["builtin:rag=8"].startswith("builtin") or "builtin:rag=8" in manifest["data"]
    assert f"rows.jsonl@sha256:{digest}" in manifest["data"]  # a local file: its name and hash
    assert manifest["configs"]["source"] == "nexus.yaml"  # relative to the project
    assert manifest["knowledge"]["documents"] == [
        f"notes.md@sha256:{hashlib.sha256(doc.read_bytes()).hexdigest()}",
        "tests/assets/rag/docs/veloria.md",
    ]
    assert manifest["knowledge"]["document_count"] == 2
    assert manifest["teacher"]["spec"] == "teacher" and manifest["teacher"]["weights_sha256"]
    assert manifest["student"]["path"] == "nexus-release-v1"
    assert manifest["configs"]["release"]["release_dir"] == "nexus-release-v1"
    assert "--model_path nexus-release-v1`" in (release / "README.md").read_text()


def _release_of(model_dir: Path, phase: str, tmp_path: Path, **settings) -> tuple[Path, str]:
    """``run_release`` on ``model_dir`` as phase ``phase``'s output (benchmark, retention and the
    student profile off); returns the release and what the status printer printed."""
    results = tmp_path / "results"
    shutil.copytree(model_dir, results / phase / "model")
    out = io.StringIO()
    cfg = ReleaseConfig(
        teacher=str(model_dir), release_dir=str(tmp_path / "nexus-release-v1"), docs=[str(RAG_DOC)],
        index={"chunk_tokens": 48, "chunk_overlap": 12}, benchmark={"enabled": False},
        retention={"enabled": False}, profile_student=False, **settings,
    )  # fmt: skip
    ctx = SimpleNamespace(
        config=PipelineConfig(), results_dir=results, flags=Flags(tmp_path / "flags"),
        printer=StatusPrinter(out), source="test.yaml",
    )  # fmt: skip
    run_release(cfg, ctx)
    return tmp_path / "nexus-release-v1", out.getvalue()


def test_release_gguf_writes_the_student_beside_the_model(tiny_llama_dir, tmp_path, monkeypatch):
    """Issue 21 item 4: ``release.gguf`` writes ``<release>/<name>-<type>.gguf`` through the export
    of ``nexus export gguf``; the card and the manifest name it."""
    from gguf import GGUFReader

    from nexus.models.gguf_export import check_export

    monkeypatch.setenv("NEXUS_CACHE_DIR", str(tmp_path / "cache"))
    release, printed = _release_of(tiny_llama_dir, "distill", tmp_path, gguf="f16")
    gguf_file = release / "nexus-release-v1-f16.gguf"
    assert gguf_file.is_file() and not list(release.glob(".*.part"))  # renamed into place when complete
    reader = GGUFReader(str(gguf_file))
    assert bytes(reader.fields["general.name"].parts[-1]).decode() == "nexus-release-v1"
    types = {t.tensor_type.name for t in reader.tensors}
    assert types == {"F16", "F32"}  # matrices f16, norms f32
    agreement = check_export(release, gguf_file)  # loads back with the release's distributions
    assert agreement.mean_kl < 1e-4, agreement
    assert "wrote nexus-release-v1-f16.gguf" in printed
    manifest = json.loads((release / MANIFEST).read_text())
    assert manifest["gguf"] == {
        "file": gguf_file.name, "type": "f16", "bytes": gguf_file.stat().st_size, "architecture": "llama",
    }  # fmt: skip
    assert f"`{gguf_file.name}` (f16," in (release / "README.md").read_text()


def test_release_gguf_of_a_routed_student_is_one_line_not_a_failure(tiny_tokenizer, tmp_path):
    import tiny

    routed = tiny.save_model(
        tiny.build_model("mixtral", tiny_tokenizer, num_layers=1, hidden=32, intermediate=64),
        tiny_tokenizer,
        tmp_path / "routed",
    )
    release, printed = _release_of(routed, "router", tmp_path, gguf="q8_0")
    (line,) = [ln for ln in printed.splitlines() if "GGUF" in ln]
    assert "no GGUF written: 'mixtral' is a mixture-of-experts model" in line
    assert not list(release.glob("*.gguf")) and (release / "config.json").is_file()
    manifest = json.loads((release / MANIFEST).read_text())
    assert manifest["gguf"]["type"] == "q8_0" and "mixture-of-experts" in manifest["gguf"]["skipped"]
    assert "No GGUF file (release.gguf: q8_0): 'mixtral' is a mixture" in (release / "README.md").read_text()
