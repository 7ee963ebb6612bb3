"""The training progress bar: percent of the budget, loss, throughput and the time left."""

import sys

from crammit.config import Budget
from crammit.train.progress import Progress
from crammit.train.rundir import StepMetrics


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
