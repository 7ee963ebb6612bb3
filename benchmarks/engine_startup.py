"""A CPU worker's first DeepSpeed engine on a fresh install: crammit against DeepSpeed's default.

Each variant runs in a fresh process with an empty torch extensions directory (what a new
machine, CI clone or virtual environment starts from) and times the process from its start
to a first optimizer step of a small model under a one-member gloo group:
- baseline, DeepSpeed's default: its CPU backend compiles the shared-memory all-reduce it
  uses for tensor-parallel inference when it starts;
- crammit: `engine.create_engine` marks that op unavailable on CPU, so nothing is compiled.

    python benchmarks/engine_startup.py
    python benchmarks/engine_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "baseline"
VARIANTS = (BASELINE, "crammit")

FIRST_STEP = """
import sys, torch
from crammit.config import Device, RecipeConfig, TrainConfig
from crammit.train import engine
if sys.argv[1] == "baseline":  # create_engine then leaves DeepSpeed's op table as it is
    engine.INFERENCE_ALL_REDUCE_OP = "no op"
config = TrainConfig(run_dir="", device=Device.CPU, compile=False,
                     recipe=RecipeConfig(batch_size=2, micro_batch_size=2))
with engine.process_group(Device.CPU):
    model = engine.create_engine(torch.nn.Linear(64, 64), config)
    model.backward(model(torch.ones(2, 64)).sum())
    model.step()
"""


def first_step_seconds(variant: str) -> float:
    with tempfile.TemporaryDirectory() as extensions:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", FIRST_STEP, variant], check=True, capture_output=True,
                       env={**os.environ, "TORCH_EXTENSIONS_DIR": extensions})
        seconds = time.perf_counter() - start
        if variant != BASELINE and any(Path(extensions).glob("**/*.so")):
            raise SystemExit(f"{variant} compiled an op")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per variant, alternating")
    args = parser.parse_args()
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            times[variant].append(first_step_seconds(variant))
    baseline = min(times[BASELINE])
    print("| variant | process start to first step (best of "
          f"{args.repeats}) | each | / {BASELINE} |\n| --- | ---: | --- | ---: |")
    for variant, seconds in times.items():
        each = ", ".join(f"{value:.1f} s" for value in seconds)
        print(f"| {variant} | {min(seconds):.1f} s | {each} | {min(seconds) / baseline:.2f} |")


if __name__ == "__main__":
    main()
