"""The compute-optimal allocation an L(N, D) law implies, under one convention for C.

C is what the study measured: each trial's analytic training FLOPs (`crammit/model/flops.py`),
or 6·N·D for a table without a flops column. How C relates to N and D is the trials' own
FLOPs per token as a function of N, c(N), so that C = c(N)·D holds for every trial: log-linear
in N between the sizes the trials trained, and beyond them a power law with the slope of all
sizes (6·N exactly for a table without flops). At a budget C the allocation minimises
L(N, C / c(N)) over N; c is a power law on each piece, where the minimum has a closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crammit.study.laws import Interval, LawFit, percentile_interval

# Where the allocation may put N: the trials' range widened by these factors. An optimum
# pinned to an end is no optimum the law can tell.
SMALLEST_PARAMS_FACTOR = 1e-6
LARGEST_PARAMS_FACTOR = 1e9


@dataclass(frozen=True)
class FlopsPerToken:
    """c(N): training FLOPs per token at N parameters, log-linear between knots (the trials'
    sizes) and a power law of slope `outer_slope` beyond them."""

    log_params: tuple[float, ...]  # the knots, ascending
    log_flops: tuple[float, ...]  # log FLOPs per token at each knot
    outer_slope: float

    @classmethod
    def from_trials(cls, params: Any, tokens: Any, flops: Any) -> FlopsPerToken:
        """The knots are the distinct sizes, each at its median FLOPs per token."""
        params, per_token = np.asarray(params, float), np.asarray(flops, float) / np.asarray(tokens, float)
        sizes = np.unique(params)
        knots = np.log([np.median(per_token[params == size]) for size in sizes])
        log_sizes = np.log(sizes)
        slope = float(np.polyfit(log_sizes, knots, 1)[0]) if len(sizes) > 1 else 1.0
        return cls(tuple(log_sizes), tuple(knots), slope)

    def describe(self) -> str:
        return (f"C = c(N)·D, c the trials' training FLOPs per token, log-linear in N between their "
                f"{len(self.log_params)} sizes and N^{self.outer_slope:.3g} beyond them")

    def __call__(self, params: Any) -> np.ndarray:
        log_n = np.log(np.asarray(params, float))
        inside = np.interp(log_n, self.log_params, self.log_flops)
        below = self.log_flops[0] + self.outer_slope * (log_n - self.log_params[0])
        above = self.log_flops[-1] + self.outer_slope * (log_n - self.log_params[-1])
        return np.exp(np.where(log_n < self.log_params[0], below,
                               np.where(log_n > self.log_params[-1], above, inside)))

    def pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lower log N, upper log N, log c at the lower end, slope) of each power-law piece."""
        knots, values = np.array(self.log_params), np.array(self.log_flops)
        low_end = knots[0] + np.log(SMALLEST_PARAMS_FACTOR)
        high_end = knots[-1] + np.log(LARGEST_PARAMS_FACTOR)
        starts = np.concatenate([[low_end], knots])
        ends = np.concatenate([knots, [high_end]])
        inner = np.diff(values) / np.maximum(np.diff(knots), 1e-300)
        slopes = np.concatenate([[self.outer_slope], inner, [self.outer_slope]])
        at_start = np.concatenate([[values[0] - self.outer_slope * (knots[0] - low_end)], values])
        return starts, ends, at_start, slopes


def allocate(params: np.ndarray, flops: Any, per_token: FlopsPerToken
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute-optimal N, D and loss at each of `flops` (M,) for L(N, D) parameter rows
    (..., 5) = (E, A, B, alpha, beta): each of shape (..., M)."""
    log_c = np.log(np.atleast_1d(np.asarray(flops, float)))
    starts, ends, at_start, slopes = per_token.pieces()
    # (..., budgets, pieces): on a piece log c = offset + slope·n, and dL/dn = 0 where
    # log(alpha·A) - alpha·n = log(slope·beta·B) + beta·(log c(n) - log C).
    e, a, b, alpha, beta = (value[..., None, None] for value in np.moveaxis(params, -1, 0))
    offset = at_start - slopes * starts
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = ((np.log(alpha * a) - np.log(slopes * beta * b) - beta * (offset - log_c[:, None]))
             / (alpha + beta * slopes))
    n = np.clip(np.nan_to_num(n, nan=starts[0]), starts, ends)
    log_d = log_c[:, None] - offset - slopes * n
    loss = e + a * np.exp(-alpha * n) + b * np.exp(-beta * log_d)
    best = np.argmin(loss, axis=-1)[..., None]

    def pick(values: np.ndarray) -> np.ndarray:
        return np.take_along_axis(np.broadcast_to(values, loss.shape), best, -1)[..., 0]

    return np.exp(pick(n)), np.exp(pick(log_d)), pick(loss)


def compute_optimal(fit: LawFit, flops: Any, per_token: FlopsPerToken) -> dict[str, Interval]:
    """Params, tokens and loss of the compute-optimal model at each of `flops` under
    C = c(N)·D, with percentile intervals over the bootstrap samples."""
    return {name: percentile_interval(estimate, samples, fit.confidence)
            for name, estimate, samples in zip(("params", "tokens", "loss"),
                                               allocate(fit.estimate, flops, per_token),
                                               allocate(fit.samples, flops, per_token), strict=True)}
