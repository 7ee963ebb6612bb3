"""Start, resume and launch runs: the driver side, where Ray appears.

`prepare_run` lays out a run directory (config, data, tokenizer) on the driver, so
workers only read; `launch` runs `train_loop` on a Ray Train `TorchTrainer`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from crammit.config import Device, TrainConfig
from crammit.data.prepare import TOKENIZER_FILE, prepare_data
from crammit.errors import CrammitError
from crammit.train import rundir
from crammit.train.loop import train_loop


def default_run_dir(size_name: str, root: Path = Path("runs")) -> Path:
    return root / f"{time.strftime('%Y%m%d-%H%M%S')}-{size_name}"


def prepare_run(config: TrainConfig, cache_dir: Path) -> Path:
    """A new run directory holding the resolved config, packed data and tokenizer."""
    run_dir = Path(config.run_dir)
    if rundir.is_run_dir(run_dir):
        raise CrammitError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    data = prepare_data(config.corpus, config.model.vocab_size, config.model.seq_len,
                        run_dir / rundir.DATA_DIR, cache_dir)
    shutil.copyfile(data.path / TOKENIZER_FILE, run_dir / TOKENIZER_FILE)
    if len(data.eval_sequences()) < config.recipe.micro_batch_size * config.num_workers:
        raise CrammitError(
            f"the corpus holds out only {len(data.eval_sequences())} sequences, fewer than one "
            f"micro-batch per worker; use a larger --corpus or a smaller --micro-batch"
        )
    rundir.save_config(run_dir, config)  # last: its presence marks a complete run directory
    return run_dir


def resume_config(run_dir: Path) -> TrainConfig:
    if not rundir.is_run_dir(run_dir):
        raise CrammitError(f"{run_dir} is not a crammit run directory (no {rundir.CONFIG_FILE}); "
                           "pass the --out directory of an earlier run")
    return rundir.load_config(run_dir)


def connect(config: TrainConfig, address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, or start a local one) and check
    it has the workers the run asks for, before any work is done."""
    import ray

    # Workers log through the driver; keep Ray's own chatter to errors.
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             logging_config=ray.LoggingConfig(log_level="ERROR"), ignore_reinit_error=True)
    _check_resources(ray.cluster_resources(), config.num_workers, config.device == Device.CUDA)


def launch(config: TrainConfig) -> dict:
    """Run `train_loop` on `config.num_workers` Ray Train workers; returns final.json."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(config.run_dir).resolve()
    config = TrainConfig.from_dict({**config.to_dict(), "run_dir": str(run_dir)})
    use_gpu = config.device == Device.CUDA
    # CPU workers split the machine's cores; Ray sets each worker's thread count from this.
    cpus = max(1, int(ray.cluster_resources()["CPU"]) // config.num_workers)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}",
                             storage_path=str(run_dir / "ray")),
    )
    trainer.fit()
    return rundir.read_final(run_dir)


def _check_resources(resources: dict, workers: int, use_gpu: bool) -> None:
    kind = "GPU" if use_gpu else "CPU"
    available = int(resources.get(kind, 0))
    if workers > available:
        fix = "--gpus 0 to train on CPUs" if use_gpu and available == 0 else f"at most {available}"
        raise CrammitError(f"asked for {workers} {kind} workers but the Ray cluster has {available} "
                           f"{kind}s; use {fix}")
