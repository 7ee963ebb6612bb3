"""Joining a Ray cluster (the one place crammit calls `ray.init`), and what a cluster has."""

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
