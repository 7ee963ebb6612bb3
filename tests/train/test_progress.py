"""The budget clock, and the training progress bar: percent of the budget, loss, throughput and the
time left."""

import sys
import time

from crammit.config import Budget
from crammit.train.progress import BudgetClock, Progress
from crammit.train.rundir import StepMetrics
from crammit.train.state import TrainState


def step(number: int) -> StepMetrics:
    return StepMetrics(step=number, tokens=1000 * number, flops=0.0, elapsed_s=float(number), loss=5.25,
                       lr=1e-3, batch_size=16, tokens_per_s=1234.0, mfu=None, attempt=1)


def test_the_bar_counts_percent_of_the_budget_and_states_the_time_left(monkeypatch):
    if "ray" in sys.modules:  # the suite's Ray session would make it Ray's bar, drawn by a driver
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    progress = Progress(Budget.hours(1.0), enabled=True)
    progress.update(0.278, step(3))
    assert (progress.bar.total, progress.bar.unit, progress.bar.n) == (100, "%", 27)
    # A time budget's time left is the budget's: 72.2 % of an hour.
    assert progress.bar.desc.startswith("step 3 | loss 5.250 | 1,234 tok/s | ETA 00:43:19")
    assert " 27%|" in str(progress.bar) and "‰" not in str(progress.bar)
    progress.update(1.0, step(10))
    assert progress.bar.n == 100
    progress.close()


def test_the_budget_clock_leaves_evaluation_out_and_measures_a_time_budgets_micro_batch():
    hours = BudgetClock(Budget.hours(1.0), elapsed_s=360.0, micro_step_tokens=1024, flops_per_token=6.0)
    assert hours.micro_batch_cost is None and hours.micro_batches_left(0.1) is None
    with hours.paused():
        time.sleep(0.2)
    hours.start_step()
    elapsed, per_micro_batch = hours.step_timing(accumulation=2)
    assert 360.0 <= elapsed < 360.1 and 0 <= per_micro_batch < 0.05  # the pause is not training time
    hours.measured(36.0)  # one micro-batch: 1 % of the hour
    assert hours.micro_batch_cost == 0.01 and hours.micro_batches_left(0.1) == 90
    assert hours.progress(TrainState(elapsed_s=1800.0)) == 0.5

    tokens = BudgetClock(Budget.tokens(10 * 1024), elapsed_s=0.0, micro_step_tokens=1024, flops_per_token=6.0)
    assert tokens.micro_batch_cost == 0.1 and tokens.micro_batches_left(0.25) == 8
    tokens.measured(36.0)  # a token budget's cost is known, not measured
    assert tokens.micro_batch_cost == 0.1
