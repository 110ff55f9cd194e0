"""Files users share: artifacts get the user's umask permissions (another user can read a release),
and replacing a model directory or a knowledge index leaves the old or the new complete state
whenever the writer is SIGKILLed.

The crash tests run the writer in a child process that kills itself (SIGKILL) just before its
N-th file-system operation (rename, replace, unlink, rmdir, mkdir, open, fsync, chmod, the
directory swap), for N = 0, 1, 2, ... until a run completes: every point between two operations
is hit once. After each kill the parent reads the result the way Nexus's readers do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from nexus.utils import recover_dir, write_dir_atomically

TESTS = Path(__file__).resolve().parent

# Prepended to each child's script: arm() makes the process SIGKILL itself before operation KILL_AT.
KILLER = textwrap.dedent(
    """
    import builtins, os, signal, sys
    sys.path.insert(0, {tests!r})
    _left = [int(os.environ["KILL_AT"])]

    def _counting(fn):
        def wrapper(*args, **kwargs):
            if _left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            _left[0] -= 1
            return fn(*args, **kwargs)
        return wrapper

    def arm(module=None):
        for name in ("rename", "replace", "unlink", "rmdir", "mkdir", "open", "fsync", "chmod", "fchmod"):
            setattr(os, name, _counting(getattr(os, name)))
        builtins.open = _counting(builtins.open)
        if module is not None and hasattr(module, "_exchange"):
            module._exchange = _counting(module._exchange)
    """
).format(tests=str(TESTS))


def _kill_at_every_point(script: str, check, reset, *, max_points: int = 400, min_points: int = 8) -> None:
    """Run ``script`` killed before operation 0, 1, 2, ... until it completes. After each kill
    ``check(point)`` returns what the reader found ("old", "new" or anything else) and the
    problems seen; then ``reset()`` restores the old state."""
    reset()
    seen, problems = set(), []
    for point in range(max_points):
        proc = subprocess.run(
            [sys.executable, "-c", KILLER + script],
            env={**os.environ, "KILL_AT": str(point)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0:
            assert "DONE" in proc.stdout
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        found, trouble = check(point)
        seen.add(found)
        problems += trouble
        reset()
    else:
        raise AssertionError(f"the writer did not finish within {max_points} operations")
    assert not problems, "\n".join(problems)
    assert point >= min_points and seen == {"old", "new"}, (point, seen)


# ---------------------------------------------------------------------------- directory replace

OLD_TREE = {"config.json": "old-config", "model.safetensors": "old-weights", "sub/only_old.txt": "old"}
NEW_TREE = {"config.json": "new-config", "model.safetensors": "new-weights", "sub/only_new.txt": "new"}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _plant(root: Path, tree: dict[str, str]) -> None:
    for name, text in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


DIR_WRITER = """
import json
from pathlib import Path
import nexus.utils as utils
if {fallback}:
    utils._exchange = lambda a, b: False  # a file system without renameat2(RENAME_EXCHANGE)
tree = json.loads({tree!r})

def writer(tmp):
    for name, text in tree.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)

arm(utils)
utils.write_dir_atomically(Path({final!r}), writer, what="the model")
print("DONE")
"""


@pytest.mark.parametrize("fallback", [False, True], ids=["rename-exchange", "rename-aside"])
def test_directory_replace_survives_sigkill_at_every_point(tmp_path, fallback):
    parent = tmp_path / "out"
    final = parent / "model"
    script = DIR_WRITER.format(fallback=fallback, tree=json.dumps(NEW_TREE), final=str(final))

    def reset() -> None:
        shutil.rmtree(parent, ignore_errors=True)
        final.mkdir(parents=True)
        _plant(final, OLD_TREE)

    def check(point: int) -> tuple[str, list[str]]:
        problems = []
        # what a reader finds (resolve_model calls recover_dir before looking at the path)
        found = recover_dir(final)
        state = _tree(found) if found.is_dir() else None
        label = "old" if state == OLD_TREE else "new" if state == NEW_TREE else "neither"
        if label == "neither":
            problems.append(f"killed at operation {point}, the reader finds {state}")
        # the next write finishes the job and leaves no debris behind
        write_dir_atomically(final, lambda tmp: _plant(tmp, NEW_TREE), what="the model")
        debris = sorted(p.name for p in parent.iterdir() if p.name != "model")
        if _tree(final) != NEW_TREE or debris:
            problems.append(f"killed at operation {point}, the next write leaves {debris}")
        return label, problems

    _kill_at_every_point(script, check, reset)
    assert _tree(final) == NEW_TREE
    assert sorted(p.name for p in parent.iterdir()) == ["model"]


def test_reader_without_write_access_reads_the_old_copy():
    """Killed between the two renames of the fallback: a reader that cannot move the old copy
    back (no write permission: as root, the reader runs as `nobody`) still gets a complete
    directory; one with write access moves it back."""
    base = Path(tempfile.mkdtemp(prefix="nexus-readonly-"))  # pytest's tmp_path is private to root
    try:
        final, aside = base / "model", base / ".model.old"
        aside.mkdir()
        _plant(aside, OLD_TREE)
        os.chmod(base, 0o555)
        reader = (
            f"import json; from nexus.utils import recover_dir; found = recover_dir({str(final)!r}); "
            "print(json.dumps({str(p.relative_to(found)): p.read_text() for p in found.rglob('*') if p.is_file()}))"
        )
        command = [sys.executable, "-c", reader]
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("needs setpriv to read as another user")
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=base)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == OLD_TREE and not final.exists()
        os.chmod(base, 0o755)
        assert recover_dir(final) == final and _tree(final) == OLD_TREE  # with write access: moved back
        assert not aside.exists()
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------- knowledge index

OLD_DOCS = {
    "alpha.md": "# Alpha\n\nThe alpha valve opens at dawn.\n",
    "beta.md": "# Beta\n\nBeta pumps run hot.\n",
}
NEW_DOCS = {
    "gamma.md": "# Gamma\n\nGamma gears turn slowly.\n",
    "delta.md": "# Delta\n\nDelta drains fill.\n",
}

INDEX_ADDER = """
from pathlib import Path
import nexus.knowledge.index as index_mod
from hash_embedder import HashEmbedder

real_write = index_mod._write

def armed_write(*args, **kwargs):
    arm()
    return real_write(*args, **kwargs)

index_mod._write = armed_write
index_mod.add_to_index(Path({index!r}), [Path({docs!r})], embedder=HashEmbedder())
print("DONE")
"""


def test_index_add_survives_sigkill_at_every_point(tmp_path):
    from hash_embedder import HashEmbedder

    from nexus.errors import NexusError
    from nexus.knowledge.index import add_to_index, build_index, read_index_dir

    embedder = HashEmbedder()
    old_dir, new_dir = tmp_path / "old_docs", tmp_path / "new_docs"
    _plant(old_dir, OLD_DOCS)
    _plant(new_dir, NEW_DOCS)
    index = tmp_path / "release"
    script = INDEX_ADDER.format(index=str(index), docs=str(new_dir))

    def sources(directory: Path) -> set[str]:
        faiss_index, docs, meta = read_index_dir(directory)
        assert faiss_index.ntotal == len(docs) == meta["rows"]
        assert {Path(r["source"]).name for r in meta["documents"]} == {Path(d["source"]).name for d in docs}
        return {Path(d["source"]).name for d in docs}

    def reset() -> None:
        shutil.rmtree(index, ignore_errors=True)
        index.mkdir()
        (index / "model.safetensors").write_text("the release's model, not part of the index")
        build_index([old_dir], index, embedder=embedder)

    old, new = set(OLD_DOCS), set(OLD_DOCS) | set(NEW_DOCS)
    expected_files = [
        ".knowledge_write.lock",  # the writers' turn (empty), kept
        "knowledge_docs.json",
        "knowledge_index.faiss",
        "knowledge_meta.json",
        "model.safetensors",
    ]

    def check(point: int) -> tuple[str, list[str]]:
        problems = []
        try:
            got = sources(index)  # what `nexus chat`/KnowledgeTower.load reads
        except NexusError as exc:
            got = str(exc)
        label = "old" if got == old else "new" if got == new else "neither"
        if label == "neither":
            problems.append(f"killed at operation {point}, the reader finds {got}")
        add_to_index(index, [new_dir], embedder=embedder)  # the next write completes it
        files = sorted(p.name for p in index.iterdir())
        if sources(index) != new or files != expected_files:
            problems.append(f"killed at operation {point}, the next add leaves {files}")
        return label, problems

    _kill_at_every_point(script, check, reset)
    assert sources(index) == new


# ---------------------------------------------------------------------------- permissions

PERMISSION_WRITER = """
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1])
from nexus.utils import atomic_write_json, make_temp_dir, write_dir_atomically
from nexus.knowledge.index import build_index
from hash_embedder import HashEmbedder

atomic_write_json(out / "summary.json", {"ok": 1})
write_dir_atomically(out / "model", lambda tmp: (tmp / "model.safetensors").write_bytes(b"w"))
write_dir_atomically(out / "model", lambda tmp: (tmp / "model.safetensors").write_bytes(b"w2"))
(make_temp_dir(out, ".corpus.") / "train.npy").write_bytes(b"x")
docs = out / "docs"
docs.mkdir()
(docs / "a.md").write_text("# A\\n\\nSome words to index.\\n")
build_index([docs], out / "index", embedder=HashEmbedder())
if len(sys.argv) > 2:
    from nexus.models import convert_gguf
    convert_gguf(sys.argv[2])
print("DONE")
"""


def _write_as(umask: int, out: Path, *extra: str, env: dict | None = None) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + PERMISSION_WRITER,
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_get_the_umask_permissions(tmp_path, umask, tiny_llama_dir, tiny_tokenizer):
    from test_gguf import write_llama_gguf
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777 & ~umask)
    gguf = write_llama_gguf(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tiny_tokenizer, tmp_path / "t.gguf"
    )
    _write_as(umask, out, str(gguf), env={"NEXUS_CACHE_DIR": str(out / "cache")})
    modes = _modes(out)
    assert any(name.startswith("cache/gguf/") and name.endswith("model.safetensors") for name in modes)
    assert "index/knowledge_index.faiss" in modes and "model/model.safetensors" in modes
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o777 if (out / name).is_dir() else 0o666) & ~umask
    }
    assert not wrong, f"umask {umask:03o}: {wrong}"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_user_reads_a_release_and_reuses_the_conversion_cache(tiny_llama_dir, tiny_tokenizer):
    """Written by root under umask 022; read by `nobody` (no shared group): the release's model,
    manifest and index, and the GGUF conversion in a cache shared through NEXUS_CACHE_DIR."""
    import torch
    from test_gguf import write_llama_gguf
    from transformers import AutoModelForCausalLM

    base = Path(tempfile.mkdtemp(prefix="nexus-share-"))  # pytest's tmp_path is private to root
    try:
        os.chmod(base, 0o755)
        out = base / "out"
        out.mkdir(mode=0o755)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        gguf = write_llama_gguf(model, tiny_tokenizer, base / "t.gguf")
        with torch.no_grad():
            model.model.norm.weight.mul_(2.0)
        other = write_llama_gguf(model, tiny_tokenizer, base / "other.gguf")  # not in the cache
        os.chmod(gguf, 0o644)
        os.chmod(other, 0o644)
        cache = {"NEXUS_CACHE_DIR": str(out / "cache")}
        _write_as(0o022, out, str(gguf), env=cache)
        reader = textwrap.dedent(
            f"""
            import os, sys
            from pathlib import Path
            from safetensors import safe_open
            from nexus.knowledge.index import read_index_dir
            from nexus.models import resolve_model
            out = Path({str(out)!r})
            for path in out.rglob("*"):
                if path.is_file():
                    path.read_bytes()
            print(os.getuid(), read_index_dir(out / "index")[0].ntotal, (out / "model/model.safetensors").read_bytes())
            resolved = resolve_model({str(gguf)!r})
            with safe_open(Path(resolved.path) / "model.safetensors", "pt") as f:
                print("cache", resolved.path.startswith(str(out / "cache")), len(list(f.keys())))
            from nexus.errors import NexusError
            try:
                resolve_model({str(other)!r})
            except NexusError as exc:
                print("refused", "Permission denied" in str(exc) and "NEXUS_CACHE_DIR" in str(exc))
            """
        )
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", reader],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **cache, "HOME": str(base)},
            cwd=base,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.splitlines()
        assert lines[0].split()[0] != "0" and lines[0].endswith("b'w2'"), lines
        assert lines[1].startswith("cache True"), lines
        assert lines[2] == "refused True", lines  # a conversion it cannot store: one clear error
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_apply_umask_opens_a_private_tree(tmp_path):
    """What the release does before it is moved into place: a student copied from a transformers-5
    save is 0600; an executable stays executable, symbolic links are left alone."""
    from nexus.utils import apply_umask, current_umask

    (tmp_path / "sub").mkdir(mode=0o700)
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"w")
    os.chmod(tmp_path / "sub" / "model.safetensors", 0o600)
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "run.sh", 0o700)
    (tmp_path / "link").symlink_to("/etc/hostname")
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        apply_umask(tmp_path)
    finally:
        os.umask(before)
    assert _modes(tmp_path)["sub"] == 0o750
    assert _modes(tmp_path)["sub/model.safetensors"] == 0o640
    assert _modes(tmp_path)["run.sh"] == 0o750
    assert (tmp_path / "link").is_symlink()


def test_torch_writer_failure_is_one_error_naming_the_free_space(tmp_path):
    """torch.save reports a full disk as a RuntimeError with no errno: one NexusError, old copy kept."""
    from nexus.errors import NexusError

    final = tmp_path / "checkpoint-2"
    write_dir_atomically(final, lambda tmp: (tmp / "state.pt").write_bytes(b"old"))

    def torch_full(tmp):
        (tmp / "state.pt").write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 633558336 vs 633558224"
        )

    with pytest.raises(
        NexusError, match=r"PyTorch writer failed .*unexpected pos.*MiB free there now: disk full\?; kept"
    ):
        write_dir_atomically(final, torch_full, what="checkpoint", kept=lambda: "kept")
    assert (final / "state.pt").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # no temp dir left

    def bug(tmp):
        raise RuntimeError("a bug, not a write failure")

    with pytest.raises(RuntimeError, match="a bug"):
        write_dir_atomically(final, bug)
