#!/usr/bin/env bash
# The whole Nexus pipeline on the embedded default (resume mode): ./run_nexus_master.sh [nexus run flags]
# Sets up .venv on first use (make setup), then hands every argument to `nexus run`.
set -euo pipefail
cd "$(dirname "$0")"
make --no-print-directory setup >&2
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec .venv/bin/nexus run "$@"
