#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md: throughput against HF BERT, then a short
# `crammit train --gpus 1` through Ray Train + DeepSpeed (bf16, torch.compile).
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
