"""What a study trial pays besides training: crammit's study against the same study on Ray's defaults.

One study of short trials (the `micro` size on the embedded corpus, token budgets of a few
seconds each, two trials at a time on 2 cores) runs three times, each in a fresh process with
its own Ray cluster:
- baseline, Ray's defaults: a new Tune trial actor for every trial, each starting a Ray Train
  worker, the Train controller polling its workers every 2 s, a preemption-watcher actor for
  every run;
- train-workers: crammit's settings for Ray (Tune actors reused, the controller polling every
  0.25 s, no preemption watcher), trials still training on a Ray Train worker each;
- crammit, as `crammit study run` runs it: each one-CPU-worker trial trains in its Tune
  trial's own process (Ray Train's local mode).
The Tune phase (from `Tuner` to its end) is timed; a trial's cost besides training is
(Tune phase x trials at a time - the trials' training seconds) / trials, which includes the
Tuner's own start and end spread over the trials.

    python benchmarks/trial_startup.py
    python benchmarks/trial_startup.py --trials 8 --out /tmp/startup
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray's defaults, which crammit changes for its runs (crammit.cluster.RAY_TRAIN_ENV).
BASELINE_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
TOKENS_PER_TRIAL = 16 * 128 * 40  # 40 steps of 16 sequences
BASELINE = "baseline"
VARIANTS = (BASELINE, "train-workers", "crammit")


def study_file(directory: Path, trials: int) -> Path:
    budgets = ", ".join(str(TOKENS_PER_TRIAL + index * 2048) for index in range(trials))
    path = directory / "study.toml"
    path.write_text(f"""
name = "startup"
unit = "tokens"
max_eval_sequences = 32
[data]
corpus = "embedded"
vocab_size = 8192
[[settings]]
name = "micro"
sizes = ["micro"]
budgets = [{budgets}]
gpus = 0
[settings.overrides]
batch_size = 16
micro_batch_size = 16
""")
    return path


def run_variant(variant: str, study: Path, out: Path) -> dict:
    """One study in a fresh process (and Ray cluster); its Tune phase's wall time and the
    trials' training seconds."""
    env = {**os.environ, **(BASELINE_ENV if variant == BASELINE else {})}
    result = out / f"{variant}.json"
    subprocess.run([sys.executable, __file__, "--child", variant, "--study", str(study),
                    "--out", str(out)], env=env, check=True)
    return json.loads(result.read_text())


def child(variant: str, study: Path, out: Path) -> None:
    from ray import tune

    from crammit.cluster import cluster_resources
    from crammit.study import sweep
    from crammit.study.spec import read_study_file
    from crammit.train import rundir

    if variant != "crammit":
        sweep.trains_in_trial = lambda config: False
    if variant == "baseline":
        config_class = tune.TuneConfig
        tune.TuneConfig = lambda **kwargs: config_class(**{**kwargs, "reuse_actors": False})
    spec = read_study_file(study)
    tune_seconds = []
    run_tune = sweep._tune

    def timed_tune(*args, **kwargs):
        start = time.perf_counter()
        grid = run_tune(*args, **kwargs)
        tune_seconds.append(time.perf_counter() - start)
        return grid

    sweep._tune = timed_tune
    sweep.write_report = lambda *args, **kwargs: None  # the fits after the trials are not start-up
    study_dir = out / variant
    cluster = cluster_resources(None)
    sweep.run_study(spec, study_dir, cluster, Path.home() / ".cache" / "crammit", echo=lambda line: None)
    finals = [rundir.read_final(path) for path in sorted((study_dir / "trials").iterdir())]
    concurrency = sweep.concurrent_trials(spec, cluster)
    (out / f"{variant}.json").write_text(json.dumps({
        "tune_s": tune_seconds[0], "trials": len(finals), "concurrency": concurrency,
        "training_s": sum(final.elapsed_s for final in finals)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--study", type=Path)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child, arguments.study, arguments.out)
        return
    out = arguments.out or Path(tempfile.mkdtemp(prefix="trial-startup-"))
    out.mkdir(parents=True, exist_ok=True)
    study = study_file(out, arguments.trials)
    rows = {variant: run_variant(variant, study, out) for variant in VARIANTS}
    print(f"{'variant':<10} {'trials':>6} {'at once':>7} {'Tune phase s':>12} {'training s':>10} "
          f"{'besides training, s/trial':>26}")
    overhead = {}
    for variant, row in rows.items():
        overhead[variant] = (row["tune_s"] * row["concurrency"] - row["training_s"]) / row["trials"]
        print(f"{variant:<10} {row['trials']:>6} {row['concurrency']:>7} {row['tune_s']:>12.1f} "
              f"{row['training_s']:>10.1f} {overhead[variant]:>26.1f}")
    for variant in VARIANTS[1:]:
        print(f"{variant} / {BASELINE}, besides training: {overhead[variant] / overhead[BASELINE]:.2f}")


if __name__ == "__main__":
    main()
