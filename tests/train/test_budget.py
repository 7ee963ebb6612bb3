"""Where a budget ends: micro-batch counts and the few-steps warning, as pure functions."""

import pytest

from crammit.config import Budget, RecipeConfig
from crammit.train.budget import FEW_STEPS, few_steps_warning, micro_batches_left, optimizer_steps_left


@pytest.mark.parametrize(("progress", "expected"), [(0.85, 2), (0.94, 1), (0.96, 0), (0.5, 5)])
def test_a_time_budget_ends_at_the_nearest_micro_batch_boundary(progress, expected):
    assert micro_batches_left(Budget.hours(1), progress, micro_batch_cost=0.1) == expected


@pytest.mark.parametrize(("progress", "expected"), [(0.9, 1), (0.95, 1), (0.85, 2), (0.7, 3)])
def test_token_and_flop_budgets_end_with_the_micro_batch_that_reaches_them(progress, expected):
    for budget in (Budget.tokens(1e6), Budget.flops(1e15)):
        assert micro_batches_left(budget, progress, micro_batch_cost=0.1) == expected


def test_before_the_first_timed_step_nothing_is_cut():
    assert micro_batches_left(Budget.hours(1), 0.0, micro_batch_cost=None) is None


def test_steps_left_follow_the_ramp():
    constant = RecipeConfig(batch_size=4 * 8, micro_batch_size=8, ramp_end=0.0)
    assert optimizer_steps_left(constant, 1, progress=0.0, cost=0.01, limit=1000) == 25
    ramped = RecipeConfig(batch_size=4 * 8, micro_batch_size=8, ramp_end=0.6)
    assert 25 < optimizer_steps_left(ramped, 1, progress=0.0, cost=0.01, limit=1000) < 100
    assert optimizer_steps_left(constant, 1, progress=0.0, cost=1e-6) == FEW_STEPS  # counting stops there


def test_few_steps_are_named_with_the_flag_that_helps():
    recipe = RecipeConfig()  # ramps to 8,192 sequences
    line = few_steps_warning(recipe, 1, steps_taken=1, progress=0.01, micro_batch_cost=0.01)
    assert "--batch-size" in line and "8192" in line and "\n" not in line
    assert few_steps_warning(recipe, 1, steps_taken=1, progress=0.0, micro_batch_cost=1e-7) is None
