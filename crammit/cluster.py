"""Joining a Ray cluster: the one place crammit calls `ray.init`."""

from __future__ import annotations

import logging


def start_ray(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local one; Ray's own
    logging is kept to errors so users see crammit's output."""
    import ray

    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             logging_config=ray.LoggingConfig(log_level="ERROR"), ignore_reinit_error=True)
