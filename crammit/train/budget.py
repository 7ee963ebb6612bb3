"""Where a budget ends, at the granularity of micro-batches.

A step of the ramped recipe can hold thousands of micro-batches; stopping only between
steps would overrun a time budget by up to a whole step. Before each step the loop asks
how many micro-batches the budget has left, from the measured cost of one.
"""

from __future__ import annotations

import math

from crammit.config import Budget, RecipeConfig
from crammit.train.recipe import accumulation_steps

FEW_STEPS = 100  # fewer optimizer steps than this leave the schedule only a coarse staircase


def micro_batches_left(budget: Budget, progress: float, micro_batch_cost: float | None) -> int | None:
    """Micro-batches the rest of the budget holds, one costing `micro_batch_cost` of it
    (`Budget.fraction` of its time, tokens and FLOPs); None while the cost is unknown (a
    time budget before its first step).

    A time budget ends at the micro-batch boundary nearest to it, so it is overrun by at
    most half a micro-batch (plus the measurement's noise); a token or FLOP budget ends with
    the micro-batch that reaches it."""
    if micro_batch_cost is None:
        return None
    left = (1.0 - progress) / micro_batch_cost
    return round(left) if budget.unit.is_time else math.ceil(left - 1e-9)


def optimizer_steps_left(recipe: RecipeConfig, world_size: int, progress: float, cost: float,
                         limit: int = FEW_STEPS) -> int:
    """Optimizer steps the rest of the budget allows along the batch ramp at `cost` per
    micro-batch, counted up to `limit`."""
    steps = 0
    while progress < 1.0 and steps < limit:
        progress += accumulation_steps(recipe, world_size, progress) * cost
        steps += 1
    return steps


def few_steps_warning(recipe: RecipeConfig, world_size: int, steps_taken: int, progress: float,
                      micro_batch_cost: float) -> str | None:
    """One line when the recipe and the measured cost leave fewer than FEW_STEPS optimizer
    steps in the whole budget; None otherwise."""
    steps = steps_taken + optimizer_steps_left(recipe, world_size, progress, micro_batch_cost)
    if steps >= FEW_STEPS:
        return None
    return (f"warning: at this speed the budget holds only about {steps} optimizer steps of up to "
            f"{recipe.batch_size} sequences (fewer than {FEW_STEPS} leave the schedule coarse); "
            "use a smaller --batch-size or a larger budget")
