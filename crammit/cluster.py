"""Joining a Ray cluster (the one place crammit calls `ray.init`), what a cluster has, and how
crammit's runs, trials and fine-tunes share its CPUs (the one place that decides it)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

# What crammit's jobs change of Ray Train's defaults, for every process of the job (a study's
# Tune trials start their runs' Train controllers); where the user sets one, theirs holds. The
# controller polls its workers every 2 s, so a run's end is noticed up to 2 s late. A
# preemption watcher, an actor of its own for every run, waits for a node's drain notice to
# stop the run early; crammit's runs resume from their own checkpoints instead.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# CPU training leaves this many logical CPUs to Ray Data's readers: without one they are
# never scheduled. Reading takes little compute, so torch's threads still use every core.
READER_CPUS = 1
# CPU workers share cores down to this many logical CPUs each (8 workers on 2 cores, one
# kept for the data readers); torch in each still runs on every core it is given.
MIN_CPU_PER_WORKER = 0.125


def start_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local one; Ray's own
    logging is kept to errors so users see crammit's output."""
    import ray

    env_vars = {name: os.environ.get(name, value) for name, value in RAY_TRAIN_ENV.items()}
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             logging_config=ray.LoggingConfig(log_level="ERROR"), ignore_reinit_error=True,
             runtime_env={"env_vars": env_vars})


@dataclass(frozen=True)
class ClusterResources:
    """CPUs and GPUs a study can schedule trials on, and the GPUs' model when known."""

    cpus: int
    gpus: int
    accelerator: str = ""  # e.g. "H100"; empty when there are no GPUs or Ray does not say

    def describe(self) -> str:
        gpus = f"{self.gpus} {self.accelerator} GPUs".replace("  ", " ")
        return f"{self.cpus} CPUs, {gpus}"


def cluster_resources(address: str | None) -> ClusterResources:
    """The cluster at `address` (joined), or, without one, this machine as a local Ray
    cluster would see it (without starting one: a dry run stays quick)."""
    if address:
        import ray

        start_ray(address)
        total = ray.cluster_resources()
        accelerators = [key.split(":", 1)[1] for key in total if key.startswith("accelerator_type:")]
        return ClusterResources(int(total.get("CPU", 0)), int(total.get("GPU", 0)),
                                accelerators[0] if accelerators else "")
    import torch

    gpus = torch.cuda.device_count()
    return ClusterResources(os.cpu_count() or 1, gpus, torch.cuda.get_device_name(0) if gpus else "")


def worker_cpus(total_cpus: float, workers: int, concurrent_runs: int = 1, driver_cpus: float = 0.0) -> float:
    """What Ray reserves for each CPU worker of a training run: the cluster's CPUs less the
    readers', shared by `concurrent_runs` runs (a study's trials) whose drivers hold
    `driver_cpus` each, and by the run's `workers`."""
    return max(((total_cpus - READER_CPUS) / concurrent_runs - driver_cpus) / workers,
               MIN_CPU_PER_WORKER / concurrent_runs)


def worker_threads(total_cpus: float, workers_at_once: int) -> int:
    """Torch threads of each CPU worker (training or fine-tuning): the cores shared equally by
    every worker running at once, so none waits on another's threads."""
    return max(int(total_cpus // workers_at_once), 1)


def max_cpu_workers(cpus: float) -> int:
    """CPU workers of one run that a cluster of `cpus` logical CPUs holds."""
    return max(1, int((cpus - READER_CPUS) / MIN_CPU_PER_WORKER))


def concurrent_cpu_runs(cpus: int, workers_per_run: int) -> int:
    """CPU runs (a study's trials) that fit at once: each worker's threads get cores of their own."""
    return cpus // workers_per_run
