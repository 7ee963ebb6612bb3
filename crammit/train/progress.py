"""How far through its budget a run is: the budget clock the loop stops by, and a live
progress bar with loss, throughput and time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from crammit.config import Budget
from crammit.train.budget import micro_batches_left
from crammit.train.rundir import StepMetrics
from crammit.train.state import TrainState

PERCENT = 100  # the bar counts percent of the budget (Ray's bar takes whole units)


class BudgetClock:
    """The budget's clock: the training time spent (across resumes), how much of the budget
    the run has spent, and what one data-parallel micro-batch costs of it.

    Deliberately training time: evaluation runs off the clock (`paused`). A micro-batch's
    cost is known for a token or FLOP budget, and measured step by step for a time budget."""

    def __init__(self, budget: Budget, elapsed_s: float, micro_step_tokens: int,
                 flops_per_token: float) -> None:
        self.budget = budget
        self._started = time.perf_counter() - elapsed_s
        self._step_started = self._started
        self.micro_batch_cost: float | None = (
            None if budget.unit.is_time else
            budget.fraction(0.0, micro_step_tokens, micro_step_tokens * flops_per_token))

    def progress(self, state: TrainState) -> float:
        """Fraction of the budget `state` has spent, in [0, 1]."""
        return self.budget.progress(state.elapsed_s, state.tokens, state.flops)

    def micro_batches_left(self, progress: float) -> int | None:
        """Micro-batches the rest of the budget holds; None while their cost is unknown."""
        return micro_batches_left(self.budget, progress, self.micro_batch_cost)

    def start_step(self) -> None:
        self._step_started = time.perf_counter()

    def step_timing(self, accumulation: int) -> tuple[float, float]:
        """This rank's (training seconds so far, seconds per micro-batch of this step)."""
        now = time.perf_counter()
        return now - self._started, (now - self._step_started) / accumulation

    def step_seconds(self) -> float:
        """Wall seconds since the step started (its throughput's denominator)."""
        return time.perf_counter() - self._step_started

    def measured(self, micro_batch_s: float) -> None:
        """A micro-batch's time, agreed by every rank: a time budget's cost per micro-batch."""
        if self.budget.unit.is_time:
            self.micro_batch_cost = self.budget.fraction(micro_batch_s, 0, 0.0)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time (evaluation)."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._started += time.perf_counter() - paused_at


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
        if self.budget.unit.is_time:
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
