#!/usr/bin/env bash
# The GPU speed check: DP-IQA's speed in JAX against the PyTorch original, on one GPU.
#
#   OUT=/tmp/bench bash benchmarks/gpu_check.sh           # GPU: SD 1.5 + B7 at 512x512, ~10 min
#   SIZE=tiny OUT=/tmp/x bash benchmarks/gpu_check.sh     # a CPU rehearsal of the same logic
#
# Writes $OUT/bench.jsonl (the benchmark's JSON lines: per measurement a torch and a jax line and
# their speedup), $OUT/env.txt (versions, device), $OUT/status.txt (exit status per measurement)
# and $OUT/logs/. Each measurement runs in its own process, PyTorch first and then JAX, so both
# peak-memory figures belong to that measurement alone, and under its own time limit, so one
# slow or failing measurement cannot cost the others. Measurements run most important first.
#
# The machine is expected to have Python 3.12 with jax (CUDA), flax, optax, orbax, absl, torch and
# torchvision; what else the benchmark imports (diffusers, ml-collections, grain, TFDS and their
# small dependencies) is installed from the wheels in .whl/ when not importable already.
# Teacher measurements use XLA attention with 1024-query chunks (the training configs'); the second
# teacher_infer runs cuDNN flash attention instead. Optional: TORCH_COMPILE=1 adds teacher_infer
# with torch.compile; STEPS (default 10).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output directory}"
SIZE=${SIZE:-full}
STEPS=${STEPS:-10}
mkdir -p "$OUT/logs"
: > "$OUT/bench.jsonl"
: > "$OUT/status.txt"

if ! python3 -c "import diffusers, ml_collections, grain, tensorflow_datasets" 2> /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# JAX must not take 75% of the GPU up front: torch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null \
    || echo "no nvidia-smi"
  python3 - << 'EOF'
import importlib.util, platform
import jax, torch
print("python", platform.python_version(), "| jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.version.cuda, "| torchvision importable:",
      importlib.util.find_spec("torchvision") is not None)
EOF
} > "$OUT/env.txt" 2>&1

if [ "$SIZE" = tiny ]; then
  # CPU rehearsal: XLA:CPU compiles the tiny train steps in about a minute each.
  COMMON=(--size=tiny --steps=2 --warmup=1 --input_images=8 --input_threads=2)
  limit() { echo 400; }
else
  COMMON=(--size=full --steps="$STEPS" --input_threads=16)
  # Seconds per measurement, compile times included; they sum to under ten minutes.
  limit() {
    case $1 in
      teacher_infer) echo 100 ;; student_infer) echo 60 ;; teacher_train) echo 180 ;;
      student_train) echo 100 ;; input_pipeline) echo 45 ;; *) echo 120 ;;
    esac
  }
fi

measure() {  # measure NAME [extra flags]: one process, torch and jax, JSON lines to bench.jsonl
  local name=$1 tag=$1
  shift
  [ $# -gt 0 ] && tag="$name$(echo "$*" | tr -c 'a-z0-9' '_')"
  timeout --kill-after=10 "$(limit "$name")" python3 -m launch.benchmark "${COMMON[@]}" \
    --only="$name" --torch --ratio --keep_going "$@" \
    >> "$OUT/bench.jsonl" 2> "$OUT/logs/$tag.log"
  echo "$tag exit=$?" >> "$OUT/status.txt"
}

measure teacher_infer
measure teacher_infer --attention=cudnn
measure student_infer
measure teacher_train
measure student_train
measure input_pipeline
if [ "${TORCH_COMPILE:-0}" = 1 ]; then
  measure teacher_infer --torch_compile
fi
cat "$OUT/status.txt"
