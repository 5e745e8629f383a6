#!/usr/bin/env bash
# GPU check of neuronb's training path, in one run of under 4 minutes on one H100/H200:
#   1. install the carried wheels (.whl/: fastai and what it imports that the GPU image lacks) into /tmp/site;
#   2. print the GPU and the versions in use;
#   3. smoke test (bench/gpu_smoke.py): train on cuda (bf16 + channels-last, then fp32), accuracy >= 0.9,
#      save_model/load_model round trip, fewer host syncs than batches;
#   4. bench/train_vs_torch.py --device cuda (bf16, channels-last, bs 512), then an fp32 variant, then resnet18
#      (bf16, channels-last, bs 512: DESIGN.md's GPU baseline; needs torchvision on the machine), each with the
#      GPU's busy % sampled by nvidia-smi every 200 ms.
# Usage, from the repo root: bash bench/gpu.sh            (on the GPU machine; needs .whl/ carried along)
#                            bash bench/gpu.sh --cpu-dry-run   (here: no wheels, device cpu, tiny settings)
# Logs go to $OUT (when set) or /tmp/neuronb-gpu. Exit status: 0 when every step passed.
set -uo pipefail
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
DRY=0
case "${1:-}" in
  --cpu-dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac
LOGS=${OUT:-/tmp/neuronb-gpu}
mkdir -p "$LOGS"
T0=$SECONDS
FAILED=()

if (( DRY )); then
  PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  DEV=cpu
  SMOKE_ARGS=(--device cpu --epochs 2 --precisions bf16,fp32)
  BENCH_ARGS=(--device cpu --epochs 1 --repeats 1 --bs 128 --copies 2 --precision bf16 --channels-last)
  BENCH2_ARGS=(--device cpu --epochs 1 --repeats 1 --bs 128 --precision fp32 --no-plain)
  BENCH3_ARGS=(--device cpu --arch resnet18 --epochs 1 --repeats 1 --bs 2 --images 16 --precision fp32 --no-plain)
else
  PY=python3
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl here: run with carry [\".whl\"]" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "FAIL: wheel install" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  DEV=cuda
  SMOKE_ARGS=(--device cuda --epochs 4 --precisions bf16,fp32)
  BENCH_ARGS=(--device cuda)
  BENCH2_ARGS=(--device cuda --precision fp32 --no-channels-last --no-plain --repeats 3)
  BENCH3_ARGS=(--device cuda --arch resnet18 --epochs 3 --no-plain --repeats 3)
  echo "wheels installed in $((SECONDS - T0)) s"
fi

# step NAME SECONDS CMD...: run CMD with a time limit, its output also in $LOGS/NAME.txt; remember a failure
step() {
  local name=$1 limit=$2; shift 2
  local t=$SECONDS
  echo; echo "=== $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v -e 'FutureWarning' -e '^  warnings.warn(' | tee "$LOGS/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc, $((SECONDS - t)) s"
  (( rc == 0 )) || FAILED+=("$name (rc $rc)")
}

# GPU busy % while CMD runs: nvidia-smi samples every 200 ms into $LOGS/util_NAME.csv
UTIL_PID=
util_start() {
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$LOGS/util_$1.csv" 2>/dev/null &
  UTIL_PID=$!
}
util_stop() {
  [[ -n $UTIL_PID ]] || { echo "GPU busy during $1: n/a (no nvidia-smi)"; return 0; }
  kill "$UTIL_PID" 2>/dev/null; wait "$UTIL_PID" 2>/dev/null; UTIL_PID=
  awk -v name="$1" '$1 ~ /^[0-9]+$/ { v[n++] = $1; if ($1 > 0) { if (first == "") first = n - 1; last = n - 1 } }
    END { s = 0; for (i = 0; i < n; i++) s += v[i]
          a = 0; for (i = first; i <= last && first != ""; i++) a += v[i]
          printf "GPU busy during %s: mean %.1f%% over %d samples (whole run, imports and setup included); ", name, n ? s / n : 0, n
          if (first == "") print "never busy"
          else printf "%.1f%% from the first to the last busy sample (%d samples)\n", a / (last - first + 1), last - first + 1 }' \
    "$LOGS/util_$1.csv"
}

echo "=== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,utilization.gpu --format=csv,noheader
else
  echo "no nvidia-smi (dry run: $DRY)"
fi
step versions 45 "$PY" -c "
import sys, importlib.metadata as md, torch
def version(d):
    try: return md.version(d)
    except md.PackageNotFoundError: return 'MISSING'
import fastai.learner, fastai.callback.schedule, fastai.callback.progress, fastai.metrics, neuronb.train.learner
from neuronb.train.learner import _fastai_classes; _fastai_classes()
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print(' | '.join(f'{d} {version(d)}' for d in ('torchvision', 'fastai', 'fastcore', 'fastprogress', 'fasttransform', 'plum-dispatch',
      'python-fasthtml', 'starlette', 'anyio', 'rich', 'numpy', 'pandas', 'scikit-learn', 'safetensors')))
print('fastai from', fastai.__file__)"
step smoke 80 "$PY" bench/gpu_smoke.py "${SMOKE_ARGS[@]}"
util_start bench_bf16
step bench_bf16 110 "$PY" bench/train_vs_torch.py "${BENCH_ARGS[@]}"
util_stop bench_bf16 | tee -a "$LOGS/bench_bf16.txt"
util_start bench_fp32
step bench_fp32 50 "$PY" bench/train_vs_torch.py "${BENCH2_ARGS[@]}"
util_stop bench_fp32 | tee -a "$LOGS/bench_fp32.txt"
if "$PY" -c "import torchvision" 2>/dev/null; then
  util_start bench_resnet18
  step bench_resnet18 75 "$PY" bench/train_vs_torch.py "${BENCH3_ARGS[@]}"
  util_stop bench_resnet18 | tee -a "$LOGS/bench_resnet18.txt"
  step bench_images 150 "$PY" bench/train_images_vs_torch.py $( ((DRY)) && echo --device cpu --images 600 --repeats 1 || echo --device cuda --size 224 --arch resnet18 --precision bf16 --images 6000 --epochs 3 --repeats 2 )
else
  echo; echo "=== bench_resnet18: FAIL: torchvision is not importable here; carry a torchvision wheel built for this" \
    "machine's torch and python in .whl/" | tee "$LOGS/bench_resnet18.txt"
  FAILED+=("bench_resnet18 (no torchvision)")
fi

echo
echo "=== done in $((SECONDS - T0)) s on $DEV; logs in $LOGS"
if (( ${#FAILED[@]} )); then echo "FAILED: ${FAILED[*]}"; exit 1; fi
echo "all steps passed"
