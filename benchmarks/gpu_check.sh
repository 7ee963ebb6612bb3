#!/usr/bin/env bash
# The GPU checks CI cannot run, each in one call of a lent machine (install, run, summarise):
#   gpu_check.sh [speed]  where a training step's time goes, and how fast the trainer runs:
#       one corpus prepared once, then `crammit train --gpus 1 --size crammed --tokens 1.5e7`
#       for each of RUNS, in order (a micro-batch, + a DeepSpeed variant of benchmarks/deepspeed/),
#       each tracing PROFILE_STEPS steady steps (--profile-steps); then
#       benchmarks/throughput.py against HF BERT. Runs that would start after DEADLINE
#       seconds are skipped, so the call ends inside the device's 10-minute limit.
#       BASELINE=<dir holding an older crammit/> first runs that tree at the first of RUNS,
#       for before/after figures in one call:
#           git archive <commit> crammit | (mkdir -p .baseline && tar -x -C .baseline)
#   gpu_check.sh resume   kills a GPU run (SIGKILL) after its first checkpoints and resumes
#       it, checking the bf16 ZeRO checkpoint round trip.
# Dry run on CPU: GPUS=0 SIZE=tiny TOKENS=1.5e5 BATCH=256 RUNS="32 32+autocast" bash benchmarks/gpu_check.sh
# The GPU machine has torch but not ray/deepspeed/datasets: `bash benchmarks/gpu_wheels.sh`
# puts them in .whl/ here; carry .whl (and .baseline). Output goes to $OUT (default ./gpu-out).
set -uo pipefail
OUT=$(realpath -m "${OUT:-./gpu-out}")
mkdir -p "$OUT" /tmp/site
if [ -d .whl ] && ! python3 -c "import ray, deepspeed, datasets" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  tar -C /tmp/site -xJf .whl/ray-*.tar.xz
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
GPUS=${GPUS:-1}
if [ "$GPUS" -gt 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, deepspeed, ray; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)" | tee -a "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
# The image's versions of what the carried wheels require with bounds (gpu_wheels.sh check).
python3 -m pip show pyarrow fsspec typing-extensions packaging pandas tqdm 2>/dev/null | grep -E "^(Name|Version)" \
  | paste - - >> "$OUT/gpu.txt"

if [ "${1:-}" = resume ]; then
  # Killed once its second checkpoint is named (the first follows the compile step), a few
  # seconds on: mid-training, or mid-way through writing the third.
  python3 -m crammit train --gpus 1 --tokens 2e7 --size crammed --checkpoint-minutes 0.1 \
    --out "$OUT/resume" --cache-dir /tmp/crammit-cache > "$OUT/killed.log" 2>&1 &
  run=$! first=""
  for _ in $(seq 400); do
    tag=$(cat "$OUT/resume/checkpoints/latest" 2>/dev/null)
    if [ -n "$tag" ] && [ -z "$first" ]; then first=$tag; fi
    if [ -n "$tag" ] && [ "$tag" != "$first" ]; then sleep 3; break; fi
    sleep 0.5
  done
  kill -KILL $run; wait $run
  echo "killed run exit $? (137 = SIGKILL); latest checkpoint: $(cat "$OUT/resume/checkpoints/latest")"
  ls "$OUT/resume"
  timeout 240 python3 -m crammit train --resume "$OUT/resume" > "$OUT/resumed.log" 2>&1
  echo "resumed run exit $?"; grep -a "held-out" "$OUT/resumed.log"
  python3 - "$OUT/resume" <<'PY'
import sys, json, pandas as pd
m = pd.read_parquet(f"{sys.argv[1]}/metrics.parquet")
final = json.load(open(f"{sys.argv[1]}/final.json"))
print(final)
print("steps contiguous:", m.step.tolist() == list(range(1, len(m) + 1)), "rows", len(m),
      "tokens", m.tokens.iloc[-1], ">= budget 2e7:", m.tokens.iloc[-1] >= 2e7)
print(m[["step", "elapsed_s", "tokens", "loss", "lr", "batch_size"]].iloc[:: max(1, len(m) // 10)].to_string())
PY
  rm -rf "$OUT/resume/checkpoints" "$OUT/resume/data" "$OUT/resume/ray" "$OUT/resume/model.safetensors"
  exit 0
fi

SIZE=${SIZE:-crammed} TOKENS=${TOKENS:-1.5e7} BATCH=${BATCH:-8192} PROFILE_STEPS=${PROFILE_STEPS:-1}
RUNS=${RUNS:-128 128+autocast 256 128+bf16_fp32_grads 512} DEADLINE=${DEADLINE:-400} BASELINE=${BASELINE:-}
DEVICE=$([ "$GPUS" -gt 0 ] && echo cuda || echo cpu)
DATA=/tmp/crammit-prepared
mkdir -p "$OUT/logs"
python3 -m crammit data prepare --corpus embedded --out "$DATA" > "$OUT/logs/prepare.log" 2>&1
echo "prepare exit $? at ${SECONDS}s"

train() {  # train NAME MICRO_BATCH[+VARIANT] [folder holding the crammit/ to run]
  if [ "$SECONDS" -gt "$DEADLINE" ]; then echo "skipped $1: ${SECONDS}s past the ${DEADLINE}s deadline"; return; fi
  local micro_batch=${2%%+*} variant=()
  # A variant is a DeepSpeed JSON of benchmarks/deepspeed/, against the bf16 engine's bf16
  # gradient sums: autocast (fp32 weights and gradients, bf16 matmuls under torch.autocast)
  # or bf16_fp32_grads (bf16 weights, gradients summed in fp32 by ZeRO-1's BF16_Optimizer).
  if [ "$2" != "$micro_batch" ]; then variant=(--deepspeed-config "$PWD/benchmarks/deepspeed/${2#*+}.json"); fi
  # torch.compile says when the batch ramp (or anything else) makes it recompile.
  (cd "${3:-$PWD}" && TORCH_LOGS=recompiles,graph_breaks timeout 240 python3 -m crammit train --gpus "$GPUS" --size "$SIZE" --tokens "$TOKENS" \
    --batch-size "$BATCH" --micro-batch "$micro_batch" "${variant[@]}" --data "$DATA" --out "/tmp/runs/$1" \
    --profile-steps "$PROFILE_STEPS" > "$OUT/logs/$1.log" 2>&1)
  echo "$1 exit $? at ${SECONDS}s; recompiles: $(grep -ac "Recompiling function" "$OUT/logs/$1.log"), graph breaks: $(grep -ac "Graph break" "$OUT/logs/$1.log")"
}
set -- $RUNS
# Run names keep to what the device tool returns: letters, digits, '.', '_', '-'.
if [ -n "$BASELINE" ]; then train "0-baseline-mb${1/+/-}" "$1" "$(realpath "$BASELINE")"; fi  # a tree with --profile-steps
index=1
for run in "$@"; do train "$index-mb${run/+/-}" "$run"; index=$((index + 1)); done

steps=$([ "$DEVICE" = cuda ] && echo "--steps 20 --warmup 5" || echo "--steps 3 --warmup 1")
timeout 200 python3 benchmarks/throughput.py --size "$SIZE" --device "$DEVICE" --batch 128 $steps \
  > "$OUT/logs/throughput.log" 2>&1
echo "throughput exit $? at ${SECONDS}s"

python3 benchmarks/speed_summary.py /tmp/runs/* --throughput "$OUT/logs/throughput.log" | tee "$OUT/speed_summary.txt"
# The device returns 8 files of 16 MiB at most: the first two runs' traces come back whole
# (the baseline's and the first of RUNS, or the first two of RUNS), every summary in the logs.
for run in $(ls -d /tmp/runs/* | head -2); do
  cp "$run/profile/trace.json.gz" "$OUT/trace-$(basename "$run").json.gz" 2>/dev/null
done
for run in /tmp/runs/*; do
  mkdir -p "$OUT/logs/$(basename "$run")"
  cp "$run"/*.json "$run"/*.parquet "$run"/profile/summary.* "$OUT/logs/$(basename "$run")/" 2>/dev/null
done
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$OUT/logs"
