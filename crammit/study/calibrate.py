"""How fast this machine trains each of a CPU study's sizes, so that its first plan states a
wall time: a few steps of the bare model (forward, backward, AdamW) at the setting's
micro-batch (at most MAX_MICRO_BATCH sequences), with the threads a trial's worker will get,
timed after a warm-up step in as many processes at once as the study runs trials at once.

The trainer adds masking, data loading and reporting around the same steps, and each trial
pays a start-up (a Tune trial, a Train controller, a worker) and its held-out evaluations,
which the plan adds as TRIAL_OVERHEAD_S.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from crammit.config import ModelConfig, RecipeConfig
from crammit.model.flops import training_flops_per_token

CALIBRATION_SECONDS = 15.0  # of timed steps for all sizes together (each process also imports torch)
MAX_STEPS = 20  # per size: enough for a steady rate
# Sequences a timed step holds at most: on CPU a token costs about the same from 8 sequences
# up, and a setting's micro-batch may not fit in memory at all (its trial reports that).
MAX_MICRO_BATCH = 32


def calibration_key(model: ModelConfig, recipe: RecipeConfig, threads: int, concurrent: int) -> str:
    """What one calibration timed: the model's shape, the micro-batch timed, the threads and
    the processes at once. A saved rate stands for another plan's only where this is equal."""
    timed = [dataclasses.asdict(model), min(recipe.micro_batch_size, MAX_MICRO_BATCH), threads, concurrent]
    return json.dumps(timed, sort_keys=True)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrate(models: dict[tuple[str, str], tuple[ModelConfig, RecipeConfig]], threads: int,
              seconds: float = CALIBRATION_SECONDS, concurrent: int = 1) -> dict[tuple[str, str], float]:
    """Training FLOP/s of each (setting, size)'s model on this machine with `threads` torch
    threads, timed in `concurrent` processes at once (trials that share the cores slow each
    other down), within `seconds` for all of them; the mean over the processes."""
    if concurrent <= 1:
        return _calibrate(models, threads, seconds)
    # Spawned: the planning process may hold Ray's threads; each worker pays torch's import.
    with ProcessPoolExecutor(concurrent, mp_context=multiprocessing.get_context("spawn")) as pool:
        copies = [models] * concurrent, [threads] * concurrent, [seconds] * concurrent
        runs = list(pool.map(_calibrate, *copies))
    return {key: sum(run[key] for run in runs) / len(runs) for key in models}


def _calibrate(models: dict[tuple[str, str], tuple[ModelConfig, RecipeConfig]], threads: int,
               seconds: float) -> dict[tuple[str, str], float]:
    share = seconds / max(len(models), 1)
    with _torch_threads(threads):
        return {key: _tokens_per_s(model, recipe, share) * training_flops_per_token(model, recipe.mask_rate)
                for key, (model, recipe) in models.items()}


def _tokens_per_s(model_config: ModelConfig, recipe: RecipeConfig, seconds: float) -> float:
    import torch

    from crammit.model.bert import IGNORE_INDEX
    from crammit.model.build import build_model
    from crammit.train.recipe import optimizer

    generator = torch.Generator().manual_seed(0)
    model = build_model(model_config)
    adamw = optimizer(model, recipe, fused=False)
    shape = (min(recipe.micro_batch_size, MAX_MICRO_BATCH), model_config.seq_len)
    input_ids = torch.randint(5, model_config.vocab_size, shape, generator=generator)
    labels = torch.where(torch.rand(shape, generator=generator) < recipe.mask_rate, input_ids, IGNORE_INDEX)

    def step() -> None:
        adamw.zero_grad(set_to_none=True)
        model(input_ids, labels).backward()
        adamw.step()

    step()  # warm-up: allocation and first-call costs
    start, steps = time.perf_counter(), 0
    while steps < MAX_STEPS and (steps == 0 or time.perf_counter() - start < seconds):
        step()
        steps += 1
    return steps * shape[0] * shape[1] / (time.perf_counter() - start)
