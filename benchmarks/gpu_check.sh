#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md: throughput against HF BERT, then a short
# `crammit train --gpus 1` through Ray Train + DeepSpeed (bf16, torch.compile).
# `gpu_check.sh resume` instead kills a GPU run (SIGKILL) after its first checkpoints and
# resumes it, checking the bf16 ZeRO checkpoint round trip that CI cannot.
# Written for an offline GPU machine that has torch but not ray/deepspeed: wheels for
# those come in .whl/ (see RESULTS.md). Output goes to $OUT (default ./gpu-out).
set -uo pipefail
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" /tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  tar -C /tmp/site -xJf .whl/ray-*.tar.xz
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, deepspeed, ray; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)" | tee -a "$OUT/gpu.txt"

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

timeout 200 python3 benchmarks/throughput.py --size crammed --device cuda --batch 128 --steps 20 --warmup 5 \
  2>&1 | tee "$OUT/throughput.log" | grep -v "^\[" | tail -6

timeout 300 python3 -m crammit train --gpus 1 --hours 0.03 --size crammed --checkpoint-minutes 1 \
  --out "$OUT/run" --cache-dir /tmp/crammit-cache > "$OUT/train.log" 2>&1
echo "train exit $?"
tail -c 600 "$OUT/train.log"
python3 - "$OUT/run" <<'PY' | tee "$OUT/train_summary.txt"
import sys, json, pandas as pd
run = sys.argv[1]
m = pd.read_parquet(f"{run}/metrics.parquet")
print(json.load(open(f"{run}/final.json")))
late = m[m.elapsed_s > m.elapsed_s.max() / 2]
print(f"steps {len(m)}; second half: median {late.tokens_per_s.median():,.0f} tok/s, median MFU {late.mfu.median():.1%}, final batch {m.batch_size.iloc[-1]}")
print(m.iloc[:: max(1, len(m) // 12)][["step", "elapsed_s", "loss", "lr", "batch_size", "tokens_per_s", "mfu"]].to_string())
PY
rm -rf "$OUT/run/checkpoints" "$OUT/run/data" "$OUT/run/ray" "$OUT/run/model.safetensors"
