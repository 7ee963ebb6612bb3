"""Start, resume and launch runs: the driver side, where Ray appears.

`prepare_corpus_for_run` prepares a corpus into a new run directory when none is given and
`prepare_run` lays the directory out (config, tokenizer) on the driver, so workers only read;
`fit` runs `train_loop` on a Ray Train `TorchTrainer` with the workers a `ScalingConfig`
places, and `launch`, the CLI's way in, places them by the cluster's policy first.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from crammit.cluster import MIN_CPU_PER_WORKER, max_cpu_workers, start_ray, worker_cpus, worker_threads
from crammit.config import Device, PrepareConfig, TrainConfig
from crammit.data.layout import TOKENIZER, read_manifest
from crammit.errors import CrammitError, Interrupted
from crammit.io import atomic_path
from crammit.train import checkpoint, rundir
from crammit.train.ingest import ingest
from crammit.train.loop import REPORT_TO_TUNE, train_loop

if TYPE_CHECKING:
    from ray.train import ScalingConfig


def default_run_dir(size_name: str, root: Path = Path("runs")) -> Path:
    return root / f"{time.strftime('%Y%m%d-%H%M%S')}-{size_name}"


def prepare_corpus_for_run(config: TrainConfig, cache_dir: Path) -> TrainConfig:
    """`config`, training on a prepared directory: its `data`, or, without one, its `corpus`
    prepared into the new run directory's data/ by `crammit data prepare`'s pipeline."""
    if config.data:
        return config
    from crammit.data.pipeline import prepare_corpus

    run_dir = Path(config.run_dir)
    _check_new_run_dir(run_dir)  # before minutes of preparing
    data = run_dir / rundir.DATA_DIR
    prepare_corpus(PrepareConfig(corpus=config.corpus, vocab_size=config.model.vocab_size,
                                 seq_len=config.model.seq_len), data, cache_dir)
    return replace(config, data=str(data.resolve()))


def prepare_run(config: TrainConfig) -> TrainConfig:
    """A new run directory holding the resolved config and the tokenizer of the prepared
    directory it trains on (`config.data`). Returns the config the run trains with."""
    run_dir = Path(config.run_dir)
    _check_new_run_dir(run_dir)
    source = Path(config.data)
    manifest = read_manifest(source)
    if manifest["eval_sequences"] == 0:
        raise CrammitError(f"{source} holds out no sequences to evaluate on; prepare it from a larger corpus")
    per_micro_step = config.recipe.micro_batch_size * config.num_workers
    if manifest["train_sequences"] < per_micro_step:
        raise CrammitError(f"the corpus holds only {manifest['train_sequences']} training sequences, fewer "
                           f"than one micro-batch ({config.recipe.micro_batch_size}) per worker; use a "
                           "smaller --micro-batch or a larger corpus")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / TOKENIZER) as tmp:
        shutil.copyfile(source / TOKENIZER, tmp)
    rundir.save_config(run_dir, config)  # last: its presence marks a complete run directory
    return config


def _check_new_run_dir(run_dir: Path) -> None:
    if rundir.is_run_dir(run_dir):
        raise CrammitError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise CrammitError(f"cannot write the run directory {run_dir} ({error.strerror}); "
                           "pass --out on a writable path") from None


def resume_config(run_dir: Path) -> TrainConfig:
    if not rundir.is_run_dir(run_dir):
        raise CrammitError(f"{run_dir} is not a crammit run directory (no {rundir.CONFIG_FILE}); "
                           "pass the --out directory of an earlier run")
    return rundir.load_config(run_dir)


def connect(config: TrainConfig, address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, or start a local one) and check
    it has the workers the run asks for, before any work is done."""
    import ray

    start_ray(address)
    _check_resources(ray.cluster_resources(), config.num_workers, config.device == Device.CUDA)


def launch(config: TrainConfig, in_process: bool = False, data: dict | None = None) -> rundir.FinalResults:
    """Run `train_loop` on `config.num_workers` Ray Train workers placed by the cluster's
    policy (`place`), or with `in_process` in this process (Ray Train's local mode:
    notebooks, tests, debugging); returns final.json. `data`: as `fit` takes it. The CLI's
    way in; a study's trial places its own run and calls `fit`."""
    return fit(*place(config, in_process), data)


def place(config: TrainConfig, in_process: bool = False, concurrent_runs: int = 1,
          driver_cpus: float = 0.0) -> tuple[TrainConfig, ScalingConfig]:
    """The run's workers on this Ray cluster by `crammit.cluster`'s policy: each CPU worker's
    share of the CPUs beside `concurrent_runs` runs at once whose drivers hold `driver_cpus`
    each, and its torch threads; none with `in_process`. The config carries the threads."""
    import ray
    from ray.train import ScalingConfig

    total_cpus = ray.cluster_resources()["CPU"]
    use_gpu = config.device == Device.CUDA
    cpus = worker_cpus(total_cpus, config.num_workers, concurrent_runs, driver_cpus)
    scaling = ScalingConfig(num_workers=0 if in_process else config.num_workers, use_gpu=use_gpu,
                            resources_per_worker=None if use_gpu else {"CPU": cpus})
    threads = worker_threads(total_cpus, config.num_workers * concurrent_runs)
    return replace(config, launch=replace(config.launch, cpu_threads=threads)), scaling


def fit(config: TrainConfig, scaling: ScalingConfig, data: dict | None = None, callbacks: tuple = (),
        report_to_tune: bool = False) -> rundir.FinalResults:
    """Train the run in `config.run_dir` to its budget on the workers `scaling` asks for
    (none: in this process); returns final.json. `data` is the `ingest` of `config.data`
    when the caller made it already (a study's, shared by its trials), `callbacks` go to
    Ray Train, and `report_to_tune` has the loop report to the Tune trial that runs it in
    this process (Ray Train's local mode runs no callbacks)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(config.run_dir).resolve()
    config = replace(config, run_dir=str(run_dir))
    name = f"attempt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.to_dict(), "launch": name, REPORT_TO_TUNE: report_to_tune},
        **(data or ingest(Path(config.data))),
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=str(run_dir / "ray"), callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=config.launch.max_failures),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    with _sigint_handler_restored():
        try:
            trainer.fit()
        except TrainingFailedError as error:
            raise CrammitError(f"training stopped: {_cause(error)}; once that is fixed, continue with "
                               f"`crammit train --resume {run_dir}`") from error
        except SystemExit:
            # Ray Train's Ctrl-C handler aborts the run, then exits (with status 0).
            raise Interrupted(stopped_at(run_dir)) from None
    if not (run_dir / rundir.FINAL_FILE).is_file():  # aborted without that exit
        raise Interrupted(stopped_at(run_dir))
    return rundir.read_final(run_dir)


@contextmanager
def _sigint_handler_restored() -> Iterator[None]:
    """Ray Train's `fit()` installs a Ctrl-C handler that aborts its run, and leaves it
    installed; after the run, Ctrl-C is the caller's again."""
    if threading.current_thread() is not threading.main_thread():  # a Tune trial's: Tune's own
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stopped_at(run_dir: Path) -> str:
    """Where a stopped run will resume: its last complete checkpoint, if any."""
    tag = checkpoint.latest_tag(run_dir)
    if tag is None:
        return f"the run in {run_dir} stopped before its first checkpoint"
    step = int(tag.removeprefix(checkpoint.TAG_PREFIX))
    return f"the run in {run_dir} stopped; its last checkpoint is at step {step}"


def _cause(error: Exception) -> str:
    """The last line of the first worker's error (its exception, after the traceback)."""
    failures = getattr(error, "worker_failures", None) or {}
    text = str(next(iter(failures.values()), error))
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), type(error).__name__)


def _check_resources(resources: dict, workers: int, use_gpu: bool) -> None:
    if use_gpu:
        available = int(resources.get("GPU", 0))
        if workers > available:
            fix = "--gpus 0 to train on CPUs" if available == 0 else f"at most {available}"
            raise CrammitError(f"asked for {workers} GPU workers but the Ray cluster has {available} GPUs; "
                               f"use {fix}")
        return
    cpus = resources.get("CPU", 0)
    most = max_cpu_workers(cpus)
    if workers > most:
        raise CrammitError(f"asked for {workers} CPU workers but the Ray cluster's {cpus:g} CPUs hold at "
                           f"most {most} (one CPU stays with the data readers, each worker takes at least "
                           f"{MIN_CPU_PER_WORKER:g}); use --workers {most} or fewer")
