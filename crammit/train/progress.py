"""A live progress bar over the budget, with loss, throughput and time left."""

from __future__ import annotations

import sys
import time

from crammit.config import Budget, BudgetUnit
from crammit.train.rundir import StepMetrics

PERCENT = 100  # the bar counts percent of the budget (Ray's bar takes whole units)


class Progress:
    """tqdm in a plain process; Ray's tqdm inside Ray workers, which the driver draws."""

    def __init__(self, budget: Budget, enabled: bool) -> None:
        self.budget = budget
        self.bar = _make_bar() if enabled else None
        self.started = time.perf_counter()
        self.start_fraction: float | None = None

    def update(self, fraction: float, metrics: StepMetrics) -> None:
        if self.bar is None:
            return
        if self.start_fraction is None:
            self.start_fraction = fraction
        self.bar.set_description(
            f"step {metrics.step} | loss {metrics.loss:.3f} | {metrics.tokens_per_s:,.0f} tok/s"
            f" | ETA {self._left(fraction)}"
        )
        self.bar.update(int(fraction * PERCENT) - self.bar.n)

    def write(self, message: str) -> None:
        """A line of its own above the bar (Ray's bar hides itself for any print in a worker)."""
        write = getattr(self.bar, "write", None)  # tqdm's; Ray's patches `print` instead
        if write is not None:
            write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _left(self, fraction: float) -> str:
        if self.budget.unit == BudgetUnit.HOURS:
            seconds = (1 - fraction) * self.budget.amount * 3600
        else:  # extrapolate from this session's pace
            done = fraction - (self.start_fraction or 0.0)
            seconds = (time.perf_counter() - self.started) * (1 - fraction) / max(done, 1e-9)
        return time.strftime("%H:%M:%S", time.gmtime(seconds))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _make_bar():
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.experimental.tqdm_ray import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=PERCENT, desc="training", unit="%")
