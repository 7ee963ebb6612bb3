"""The recipe as small pure functions of budget progress p in [0, 1] (the paper's bert-o4,
or the original BERT's).

Nothing here knows about steps or wall time: a 6 h and a 24 h run follow the same curves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from crammit.config import RecipeConfig, Schedule
from crammit.errors import CrammitError

if TYPE_CHECKING:  # torch only where the optimizer is built: a study's recommendation plans without it
    import torch
    from torch import nn


def learning_rate(recipe: RecipeConfig, progress: float) -> float:
    """The recipe's schedule at budget progress p.

    triangle (budget-triangle2): from start_fraction·peak up to peak at
    p = 1 - decay_fraction, then linearly down to 0 at p = 1.
    warmup-linear (BERT): linearly from 0 to peak over p < warmup_fraction, then linearly
    down to 0 at p = 1."""
    if recipe.schedule is Schedule.WARMUP_LINEAR:
        if progress < recipe.warmup_fraction:
            return recipe.peak_lr * progress / recipe.warmup_fraction
        return recipe.peak_lr * max(0.0, (1.0 - progress) / (1.0 - recipe.warmup_fraction))
    rise = recipe.lr_start_fraction + progress
    fall = (1.0 - progress) / recipe.lr_decay_fraction
    return recipe.peak_lr * max(0.0, min(rise, fall, 1.0))


def accumulation_target(recipe: RecipeConfig, world_size: int) -> int:
    """Micro-batches per optimizer step once the ramp is done."""
    per_micro_step = recipe.micro_batch_size * world_size
    if recipe.batch_size % per_micro_step:
        raise CrammitError(
            f"batch size {recipe.batch_size} is not a multiple of micro-batch "
            f"{recipe.micro_batch_size} x {world_size} workers; pick --batch-size accordingly"
        )
    return recipe.batch_size // per_micro_step


def accumulation_steps(recipe: RecipeConfig, world_size: int, progress: float) -> int:
    """The batch ramp: accumulated micro-batches grow linearly from 1 to the target,
    reached at p = ramp_end."""
    target = accumulation_target(recipe, world_size)
    ramp = min(1.0, progress / recipe.ramp_end) if recipe.ramp_end > 0 else 1.0
    return 1 + math.floor((target - 1) * ramp)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices and embeddings only, none on norms and scalars."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def optimizer(model: nn.Module, recipe: RecipeConfig, fused: bool) -> torch.optim.AdamW:
    import torch

    return torch.optim.AdamW(
        parameter_groups(model, recipe.weight_decay), lr=learning_rate(recipe, 0.0),
        betas=recipe.betas, eps=recipe.adam_eps, fused=fused or None,
    )
