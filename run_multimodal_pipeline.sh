#!/usr/bin/env bash
# The multimodal Nexus pipeline on the embedded default VLM (resume mode):
#   ./run_multimodal_pipeline.sh [nexus multimodal run flags], e.g. --preset quick, --set teacher=DIR
# Sets up .venv on first use (make setup), then hands every argument to `nexus multimodal run`.
set -euo pipefail
cd "$(dirname "$0")"
make --no-print-directory setup >&2
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec .venv/bin/nexus multimodal run "$@"
