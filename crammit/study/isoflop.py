"""Chinchilla's three ways to the compute-optimal allocation, side by side: N_opt ∝ C^a and
D_opt ∝ C^b from

1. the compute frontier: the configurations no cheaper one beats, their N and D against C;
2. IsoFLOP profiles: at each FLOP budget with three sizes or more, a parabola of loss in
   log N, its minimum N_opt(C) (bracketed when it lies among the sizes tried);
3. the parametric L(N, D): the slope of its allocation (`allocation.allocate`) over the
   trials' compute.

Every exponent has a bootstrap interval from the same resamples of configurations (a
configuration's seeds move together), and the summary says whether the approaches' intervals
overlap: where they do not, the approaches disagree, as Chinchilla reported they can.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crammit.study.allocation import FlopsPerToken, allocate
from crammit.study.laws import FitOptions, Interval, LawFit, compute_frontier, percentile_interval

MIN_SIZES = 3  # a parabola through fewer sizes is no profile
MIN_BUDGETS = 3  # an exponent from fewer points is no slope
APPROACHES = ("frontier", "isoflop", "parametric")


def isoflop_minimum(params: Any, loss: Any) -> tuple[float, bool, np.ndarray] | None:
    """The minimum of the least-squares parabola of loss in log N: N_opt, whether it lies
    among the sizes tried, and the coefficients (highest power first); None where the
    parabola opens downwards (no minimum) or fewer than three sizes were tried."""
    log_n, loss = np.log(np.asarray(params, float)), np.asarray(loss, float)
    if len(np.unique(log_n)) < MIN_SIZES:
        return None
    coefficients = np.polyfit(log_n, loss, 2)
    if not coefficients[0] > 0:
        return None
    minimum = -coefficients[1] / (2 * coefficients[0])
    return float(np.exp(minimum)), bool(log_n.min() <= minimum <= log_n.max()), coefficients


def _slope(log_c: np.ndarray, log_x: np.ndarray) -> float:
    return float(np.polyfit(log_c, log_x, 1)[0]) if len(np.unique(log_c)) >= 2 else np.nan


def _frontier_points(rows: pd.DataFrame) -> pd.DataFrame:
    """The configurations on the compute frontier (by their mean loss): FLOPs, N, D, loss."""
    means = rows.groupby("configuration").agg(flops=("flops", "median"), loss=("loss", "mean"),
                                                params=("params", "first"), tokens=("tokens", "median"))
    return means[compute_frontier(means["flops"], means["loss"])].sort_values("flops")


def _isoflop_budgets(rows: pd.DataFrame) -> pd.Series | None:
    """Each row's FLOP budget where the table's budgets are FLOPs (or, without a budget
    column, its FLOPs to three significant digits); None where budgets are not FLOP budgets."""
    if "budget" in rows and rows["budget"].notna().all():
        if "budget_unit" in rows and not (rows["budget_unit"] == "flops").all():
            return None
        return rows["budget"].astype(float)
    return rows["flops"].map(lambda flops: float(f"{flops:.3g}"))


def _profiles(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Each FLOP budget's parabola minimum (over each size's mean loss), for budgets with at
    least three sizes and a minimum."""
    profiles = []
    for budget, group in rows.groupby("isoflop_budget", sort=True):
        means = group.groupby("params")["loss"].mean()
        found = isoflop_minimum(means.index, means.to_numpy())
        if found is not None:
            profiles.append({"flops": float(budget), "params": found[0], "bracketed": found[1],
                             "parabola": [float(value) for value in found[2]],
                             "sizes": [{"params": float(size), "loss": float(loss)}
                                       for size, loss in means.items()]})
    return profiles


def allocation_exponents(rows: pd.DataFrame, configurations: pd.Series, per_token: FlopsPerToken,
                         fit: LawFit | None, options: FitOptions) -> dict[str, Any]:
    """a and b of N_opt ∝ C^a, D_opt ∝ C^b by approaches 1, 2 and 3, each with an interval
    over bootstrap resamples of configurations, and whether the intervals of a overlap."""
    rows = rows.reset_index(drop=True).assign(configuration=configurations.to_numpy())
    budgets = _isoflop_budgets(rows)
    if budgets is not None:
        rows = rows.assign(isoflop_budget=budgets.to_numpy())
    labels = np.unique(rows["configuration"].to_numpy(), return_inverse=True)[1]
    count = labels.max() + 1
    draws = np.random.default_rng(options.seed).multinomial(count, np.full(count, 1 / count),
                                                            size=options.resamples)
    estimate = _exponents(rows, per_token)
    samples = [_exponents(rows.iloc[np.repeat(np.arange(len(rows)), draw[labels])], per_token)
               for draw in draws]
    out: dict[str, Any] = {}
    for approach in ("frontier", "isoflop"):
        if approach not in estimate:
            out[approach] = {"skipped": _why_not(approach, budgets)}
            continue
        values = np.array([sample.get(approach, (np.nan, np.nan)) for sample in samples])
        out[approach] = {name: _verdict(percentile_interval(estimate[approach][column], values[:, column],
                                                            options.confidence))
                         for column, name in enumerate(("a", "b"))}
    frontier_points = _frontier_points(rows)
    out["frontier_points"] = frontier_points[["flops", "params", "tokens"]].to_dict("records")
    if budgets is not None:
        out["isoflop_profiles"] = _profiles(rows)
    if fit is not None:
        out["parametric"] = _parametric(fit, rows, per_token, options.confidence)
    out["agreement"] = _agreement(out)
    return out


def _exponents(rows: pd.DataFrame, per_token: FlopsPerToken) -> dict[str, tuple[float, float]]:
    """(a, b) by the frontier and by IsoFLOP profiles, where the rows allow them."""
    found = {}
    points = _frontier_points(rows)
    if points["params"].nunique() >= 2 and len(points) >= MIN_BUDGETS:
        log_c = np.log(points["flops"].to_numpy())
        found["frontier"] = (_slope(log_c, np.log(points["params"].to_numpy())),
                             _slope(log_c, np.log(points["tokens"].to_numpy())))
    if "isoflop_budget" in rows:
        # A minimum outside the sizes tried is the parabola's extrapolation, not a minimum the runs show.
        profiles = [profile for profile in _profiles(rows) if profile["bracketed"]]
        if len(profiles) >= MIN_BUDGETS:
            log_c = np.log([profile["flops"] for profile in profiles])
            n_opt = np.array([profile["params"] for profile in profiles])
            log_d = log_c - np.log(per_token(n_opt))  # D_opt = C / c(N_opt)
            found["isoflop"] = (_slope(log_c, np.log(n_opt)), _slope(log_c, log_d))
    return found


def _parametric(fit: LawFit, rows: pd.DataFrame, per_token: FlopsPerToken,
                confidence: float) -> dict[str, Any]:
    """Approach 3: the slope of L(N, D)'s allocation over the trials' compute."""
    log_c = np.log(np.geomspace(rows["flops"].min(), rows["flops"].max(), 8))

    def slopes(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, d, _ = allocate(params, np.exp(log_c), per_token)
        fit_n = np.polyfit(log_c, np.log(n).reshape(-1, len(log_c)).T, 1)[0]
        fit_d = np.polyfit(log_c, np.log(d).reshape(-1, len(log_c)).T, 1)[0]
        return fit_n, fit_d

    (a, b), (a_samples, b_samples) = slopes(fit.estimate), slopes(fit.samples)
    return {"a": _verdict(percentile_interval(float(a[0]), a_samples, confidence)),
            "b": _verdict(percentile_interval(float(b[0]), b_samples, confidence))}


def _verdict(interval: Interval) -> dict[str, Any]:
    """An exponent as fit.json holds it: identified when its interval is bounded and inside
    (0, 1), where every allocation that grows both N and D with C lies."""
    values = {key: float(value) if value is not None and np.isfinite(value) else None
              for key, value in interval._asdict().items()}
    low, high = values["low"], values["high"]
    if low is None or high is None:
        return {**values, "identified": False, "reason": "its interval is unbounded"}
    if not 0 < low <= high < 1:
        return {**values, "identified": False,
                "reason": f"its interval [{low:.2g}, {high:.2g}] leaves (0, 1)"}
    return {**values, "identified": True}


def _agreement(out: dict[str, Any]) -> str:
    """Whether the approaches' intervals for a overlap, in words."""
    intervals = {name: out[name]["a"] for name in APPROACHES
                 if name in out and "a" in out[name] and out[name]["a"]["identified"]}
    if len(intervals) < 2:
        return "fewer than two approaches identify a: no comparison"
    low, high = max(a["low"] for a in intervals.values()), min(a["high"] for a in intervals.values())
    if low <= high:
        return "their intervals for a overlap"
    return "their intervals for a do not overlap: they disagree"


def _why_not(approach: str, budgets: pd.Series | None) -> str:
    if approach == "isoflop":
        if budgets is None:
            return "the budgets are not FLOP budgets"
        return f"fewer than {MIN_BUDGETS} FLOP budgets have a profile of {MIN_SIZES}+ sizes with a minimum"
    return f"the compute frontier holds fewer than {MIN_BUDGETS} configurations of 2+ sizes"
