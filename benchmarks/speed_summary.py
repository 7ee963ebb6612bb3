"""The table `benchmarks/gpu_check.sh` prints: for each `crammit train` run directory, the
throughput and MFU the trainer logged (median over the second half of the run), the
held-out loss it reached, and its `--profile-steps` summary; then the throughput
benchmark's table.

    python benchmarks/speed_summary.py RUN_DIR [RUN_DIR ...] [--throughput LOG]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crammit.io import read_json
from crammit.train import rundir
from crammit.train.profile import PROFILE_DIR, SUMMARY_FILE, SUMMARY_JSON


def run_row(run_dir: Path) -> str:
    config = rundir.load_config(run_dir)
    if not (run_dir / rundir.FINAL_FILE).exists():
        return f"{run_dir.name:<18}did not finish (see its log)"
    metrics = rundir.read_metrics(run_dir)
    final = rundir.read_final(run_dir)
    late = metrics[metrics.elapsed_s > metrics.elapsed_s.max() / 2]
    mfu = late.mfu.median()
    profile = run_dir / PROFILE_DIR / SUMMARY_JSON
    busy = read_json(profile)["device_busy"] if profile.exists() else None
    return (f"{run_dir.name:<18}{config.recipe.micro_batch_size:>6}{final.steps:>7}{final.tokens:>13,}"
            f"{late.tokens_per_s.median():>13,.0f}{'' if mfu != mfu else f'{mfu:.1%}':>8}"
            f"{final.eval_loss:>10.3f}{'' if busy is None else f'{busy:.1%}':>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--throughput", type=Path, help="benchmarks/throughput.py's output")
    args = parser.parse_args()
    print(f"{'run':<18}{'micro':>6}{'steps':>7}{'tokens':>13}{'tokens/s':>13}{'MFU':>8}"
          f"{'held-out':>10}{'GPU busy':>10}")
    print("(tokens/s and MFU: medians over the second half of the run; GPU busy: of the traced steps)")
    for run_dir in args.runs:
        print(run_row(run_dir))
    for run_dir in args.runs:
        summary = run_dir / PROFILE_DIR / SUMMARY_FILE
        if summary.exists():
            print(f"\n## {run_dir.name}: profile\n{summary.read_text()}")
    if args.throughput and args.throughput.exists():
        lines = args.throughput.read_text().splitlines()
        print("\n## benchmarks/throughput.py\n" + "\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
