#!/usr/bin/env bash
# The GPU checks in one call on a GPU machine: `bash bench/gpu_check.sh` (about 8 minutes; run it under a ~540 s limit).
# Needs .devdata/ (bash bench/make_devdata.sh, carried as an ignored path). Writes at most 8 files to $OUT:
#   nvidia-smi.txt gpu_util.csv bench.json throughput.json throughput_compile.json speed.json oom.json log.txt
# and prints a compact summary at the end. Every step is independent: a failing step prints its error tail
# and the next one runs. GPU_CHECK_DRY=1 runs every step with tiny settings on CPU (under ~3 minutes).
set -u
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DRY="${GPU_CHECK_DRY:-0}"
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
TMP="$(mktemp -d)"
T0=$SECONDS
BUDGET="${GPU_CHECK_BUDGET:-$([ "$DRY" = 1 ] && echo 170 || echo 480)}"  # seconds for the whole script
MODELS=(resnet18 resnet50 mobilenet_v2)
DATA="$ROOT/.devdata/hymenoptera_data"
WEIGHT="$ROOT/.devdata/weights/mobilenet_v2_qnnpack_dequantized-93d7100e.pth"
STATUS=()

say() { echo "[gpu_check +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

# step NAME MAX_SECONDS OUTFILE CMD...: run CMD with a time limit (what is left of the budget, at most MAX),
# its last stdout line (a JSON object) into OUTFILE, stderr into log.txt; on failure print the error tail.
step() {
  local name=$1 max=$2 outfile=$3
  shift 3
  local left=$((BUDGET - (SECONDS - T0) - 15))
  local limit=$((max < left ? max : left))
  if [ "$limit" -lt 20 ]; then
    say "SKIP $name: only ${left}s of the budget left"
    STATUS+=("$name: skipped (time)")
    return
  fi
  say "+ $name (limit ${limit}s): $*"
  local t=$SECONDS rc=0
  echo "===== $name: $*" >>"$LOG"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$TMP/$name.stdout" 2>"$TMP/$name.stderr" || rc=$?
  cat "$TMP/$name.stderr" >>"$LOG"
  if [ -n "$outfile" ] && [ -s "$TMP/$name.stdout" ]; then
    tail -n 1 "$TMP/$name.stdout" >"$outfile"
  fi
  if [ "$rc" -eq 0 ]; then
    say "ok $name in $((SECONDS - t))s"
    STATUS+=("$name: ok ($((SECONDS - t))s)")
  else
    local why="exit $rc"
    [ "$rc" -eq 124 ] && why="timed out after ${limit}s"
    say "FAILED $name ($why) after $((SECONDS - t))s; error tail:"
    tail -n 15 "$TMP/$name.stderr" | sed 's/^/    /'
    STATUS+=("$name: FAILED ($why)")
  fi
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  EPOCHS=1
  MODELS=(resnet18 mobilenet_v2)
  TP_ARGS=(--size 32 --batch 4 --steps 2 --repeats 2 --warmup 1 --infer-batch 8)
  export OMP_NUM_THREADS=1  # the dev machine's 2 cores are shared: one thread each avoids spin-wait contention
  COMPILE_MODELS=(resnet18)
  COMPILE_MAX=60
  COMPILE_ARGS=(--compile-backend aot_eager)  # graph capture only: inductor on 2 CPU cores takes minutes
  # a few images per class and split: the same code paths in seconds
  MINI="$TMP/mini"
  for split in train val; do
    for cls in ants bees; do
      mkdir -p "$MINI/$split/$cls"
      find "$DATA/$split/$cls" -name '*.jpg' | sort | head -n 6 | xargs -r cp -t "$MINI/$split/$cls"
    done
  done
  BENCH_DATA="$MINI"
  say "DRY RUN on CPU with tiny settings (GPU_CHECK_DRY=1)"
else
  DEVICE=cuda
  EPOCHS=5
  TP_ARGS=()
  COMPILE_MODELS=("${MODELS[@]}")
  COMPILE_MAX=150
  COMPILE_ARGS=()
  BENCH_DATA="$DATA"
fi

# Offline weights: torchvision finds the real MobileNetV2 file under its own name in $TORCH_HOME.
export TORCH_HOME="$TMP/torch_home" TL_STUDIO_HOME="$TMP/tl_home" TL_STUDIO_RUNS="$TMP/runs"
export TORCHINDUCTOR_CACHE_DIR="$TMP/inductor"
mkdir -p "$TORCH_HOME/hub/checkpoints"
if [ -f "$WEIGHT" ]; then
  ln -s "$WEIGHT" "$TORCH_HOME/hub/checkpoints/mobilenet_v2-b0353104.pth"
else
  say "WARNING: $WEIGHT missing (run bench/make_devdata.sh and carry .devdata): bench trains from scratch"
fi
[ -d "$DATA" ] || say "WARNING: $DATA missing: bench and OOM check will fail"

# 0. the machine
if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -lms 500 >"$OUT/gpu_util.csv" 2>&1 &
  SAMPLER=$!
else
  echo "nvidia-smi not found" >"$OUT/nvidia-smi.txt"
  SAMPLER=
fi
say "python: $(command -v python3) $(python3 --version 2>&1); C compiler for torch.compile: $(command -v cc gcc | head -n 1)"

# 1. tl_core imports with this machine's torch/torchvision
step imports 90 "" python3 -c '
import json, torch, torchvision
import tl_core.train.trainer, tl_core.measure.bench, tl_core.measure.throughput, tl_core.cli.main
from tl_core.devices import describe_device, pick_device
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "device": describe_device(pick_device())}))'
tail -n 1 "$TMP/imports.stdout" 2>/dev/null | tee -a "$LOG"

# 2. training + inference throughput, eager (the 3,000 images/s target)
step throughput 150 "$OUT/throughput.json" python3 -m tl_core throughput --models "${MODELS[@]}" --device "$DEVICE" \
  "${TP_ARGS[@]}" --json

# 3. reference loop vs TL Studio, features and full, MobileNetV2 (the 10x target)
step bench 240 "$OUT/bench.json" python3 -m tl_core bench "$BENCH_DATA" --device "$DEVICE" --epochs "$EPOCHS" --json

# 4. what the Backbones page measures (tl_core.measure.speed) for the same models
step speed 60 "$TMP/speed_all.json" python3 -m tl_core backbones --measure --names "${MODELS[@]}" --device "$DEVICE" --json
python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))
print(json.dumps([{k: r[k] for k in ("name", "ms_per_image", "images_per_s")} for r in rows if r["name"] in sys.argv[2:]]))
' "$TMP/speed_all.json" "${MODELS[@]}" >"$OUT/speed.json" 2>>"$LOG" || rm -f "$OUT/speed.json"

# 5. CUDA out of memory: clear message, then the job restarts
OOM_ARGS=(--device "$DEVICE")
[ "$DRY" = 1 ] && OOM_ARGS+=(--batch 32)
step oom 120 "$OUT/oom.json" python3 bench/oom_check.py "$BENCH_DATA" "${OOM_ARGS[@]}"

# 6. torch.compile, one model at a time, while the budget lasts
COMPILE_FILES=()
for m in "${COMPILE_MODELS[@]}"; do
  COMPILE_FILES+=("$TMP/compile_$m.json")
  step "compile_$m" "$COMPILE_MAX" "$TMP/compile_$m.json" python3 -m tl_core throughput --models "$m" --compile "${COMPILE_ARGS[@]}" \
    --device "$DEVICE" "${TP_ARGS[@]}" --json
done
python3 -c '
import json, sys
rows = []
for f in sys.argv[1:]:
    try:
        rows += json.load(open(f))["results"]
    except (OSError, ValueError, KeyError):
        pass
print(json.dumps({"results": rows}))
' "${COMPILE_FILES[@]}" >"$OUT/throughput_compile.json"

[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
command -v nvidia-smi >/dev/null && { echo; echo "===== after the steps"; nvidia-smi; } >>"$OUT/nvidia-smi.txt" 2>&1

say "steps: ${STATUS[*]/#/| }"
python3 bench/gpu_summary.py "$OUT" 2>&1 | tee -a "$LOG"
say "done in $((SECONDS - T0))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$TMP"
