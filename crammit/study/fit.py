"""Scaling-law fits of a study table (one row per finished run): L(C) per setting on its
compute frontier and Chinchilla's L(N, D), with bootstrap intervals, the compute-optimal
allocation, predictions at named budgets and a holdout test on the largest budget.

Both laws are a log-sum-exp of terms linear in log inputs, log L = LSE(e, a_j - p_j·log x_j),
fitted as Hoffmann et al. (2022, approach 3) did and Besiroglu et al. (2024) corrected: the
summed Huber loss of log residuals, minimised by L-BFGS to convergence from the best points
of a grid (see shared/SCALING.md). Intervals are percentile bootstrap intervals over runs: for
parameters and the law's predictions they say where the law is; for the held-back runs of the
holdout test they also hold a run's own noise (`LawFit.predict_run`), since that is what
"does the interval cover the run" asks.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from crammit.errors import CrammitError
from crammit.io import write_json

COMPUTE_LAW = "L(C) = E + A * C^-alpha"
PARAMS_TOKENS_LAW = "L(N, D) = E + A / N^alpha + B / D^beta"
REQUIRED_COLUMNS = ("params", "tokens", "loss")
MIN_COMPUTE_POINTS = 4
MIN_PARAMS_TOKENS_POINTS = 6
NAMED_HOURS = (24.0, 192.0)  # one and eight device-days
CURVE_POINTS = 60
FULL_STARTS = 8  # best grid points the full-data fit starts from
RETRY_STARTS = 4  # best grid points (under its weights) a resample is refitted from if its fit fails
DEAD_SHARE = 1e-6  # a term whose share of every prediction is below this has no gradient left
HOLDOUT_QUANTILE = 0.8  # without a budget column, rows at or above this FLOPs quantile are held back


@dataclass(frozen=True)
class FitOptions:
    """How laws are fitted: bootstrap resamples, interval confidence, Huber threshold, seed."""

    resamples: int = 1000
    confidence: float = 0.95
    huber_delta: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise CrammitError(f"resamples must be at least 1, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise CrammitError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.huber_delta > 0:
            raise CrammitError(f"huber_delta must be positive, got {self.huber_delta}")


class Interval(NamedTuple):
    """An estimate and its percentile bootstrap interval (floats or arrays alike)."""

    estimate: Any
    low: Any
    high: Any


@dataclass(frozen=True, eq=False)
class LawFit:
    """A fitted law L = E + sum_j A_j * x_j^-p_j: its parameters (E, the A_j, the p_j) in the
    inputs' own units, their bootstrap samples and how the optimiser ended."""

    names: tuple[str, ...]
    estimate: np.ndarray  # (parameters,)
    samples: np.ndarray  # (converged resamples, parameters)
    confidence: float
    converged: bool
    gradient_norm: float  # of the summed Huber objective at the estimate (normalised inputs)
    failed_resamples: int
    log_residuals: np.ndarray  # log observed - log fitted, at the points the law was fitted on

    def interval(self, name: str) -> Interval:
        column = self.names.index(name)
        return _interval(self.estimate[column], self.samples[:, column], self.confidence)

    def predict(self, *inputs: Any) -> Interval:
        """Loss at the inputs (C; or N and D), with the interval of the law itself, as arrays."""
        log_x = _log_inputs(inputs)
        return _interval(_evaluate(self.estimate, log_x), _evaluate(self.samples, log_x), self.confidence)

    def predict_run(self, *inputs: Any, seed: int = 0) -> Interval:
        """Where one more run at the inputs lands: each bootstrap law's prediction times one of
        the fit's own residuals (widened for the parameters fitted), so the interval holds a
        new run's noise as well as the law's uncertainty."""
        log_x = _log_inputs(inputs)
        n = len(self.log_residuals)
        spread = self.log_residuals * np.sqrt(n / max(n - len(self.names), 1))
        noise = np.random.default_rng(seed).choice(spread, size=(len(self.samples), 1))
        return _interval(_evaluate(self.estimate, log_x), _evaluate(self.samples, log_x) * np.exp(noise),
                         self.confidence)


def _log_inputs(inputs: Sequence[Any]) -> np.ndarray:
    return np.log(np.column_stack([np.atleast_1d(np.asarray(x, float)) for x in inputs]))


def _evaluate(params: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """The law's loss for parameter rows (..., 1 + 2k) at log inputs (m, k): shape (..., m)."""
    k = log_x.shape[1]
    # A wild resample's A may have under- or overflowed to 0 or inf: its loss is then inf or nan.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_a, power = np.log(params[..., None, 1:1 + k]), params[..., None, 1 + k:]
        return params[..., :1] + np.exp(log_a - power * log_x).sum(axis=-1)


def _interval(estimate: Any, samples: np.ndarray, confidence: float) -> Interval:
    """Percentile interval over the samples' first axis (a sample that is undefined is skipped)."""
    if not len(samples) or not np.size(estimate):  # nothing to take percentiles of
        undefined = np.full(np.shape(estimate), np.nan)
        return Interval(estimate, undefined, undefined)
    tail = 50 * (1 - confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # where no sample is defined: NaN
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return Interval(estimate, low, high)


# The objective, in normalised coordinates: theta = (e, a_1..a_k, p_1..p_k) and x (1 + k, n) =
# a row of zeros for the constant term, then each log input minus its mean, so that
# log L = LSE(e - 0, a_j - p_j * x_j). Terms run along axis -2: reducing over a few long rows
# is several times faster than over many short ones.

def _terms(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The LSE's terms for parameter rows theta (..., 1 + 2k) at x (1 + k, n): (..., 1 + k, n)."""
    k = x.shape[0] - 1
    powers = np.concatenate([np.zeros_like(theta[..., :1]), theta[..., 1 + k:]], axis=-1)
    return theta[..., :1 + k, None] - powers[..., :, None] * x


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The Huber loss of each residual, and its derivative."""
    slope = np.clip(r, -delta, delta)
    return slope * (r - 0.5 * slope), slope


def _log_predict(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log-sum-exp over the terms (axis -2), and each term's share (the LSE's gradient)."""
    top = terms.max(axis=-2, keepdims=True)
    exps = np.exp(terms - top)
    total = exps.sum(axis=-2, keepdims=True)
    return (top + np.log(total))[..., 0, :], exps / total


def _objective(theta: np.ndarray, x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Weighted sum of Huber losses of log residuals, and its gradient."""
    log_pred, share = _log_predict(_terms(theta, x))
    huber, slope = _huber(log_pred - log_loss, delta)
    # Sums, not matrix products: BLAS threads cost more than they give at this size.
    weighted = share * (weights * slope)
    gradient = np.concatenate([weighted.sum(axis=1), -(weighted[1:] * x[1:]).sum(axis=1)])
    return float((weights * huber).sum()), gradient


def _minimise(starts: np.ndarray, x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
              delta: float) -> tuple[np.ndarray, bool]:
    """L-BFGS from each start; the lowest converged optimum (or the lowest, unconverged)."""
    best, best_value, best_converged = starts[0], np.inf, False
    for start in starts:
        result = minimize(_objective, start, args=(x, log_loss, weights, delta), jac=True,
                          method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9})
        converged = bool(result.success and np.isfinite(result.fun))
        if (converged, -result.fun) > (best_converged, -best_value):
            best, best_value, best_converged = result.x, result.fun, converged
    return best, best_converged


def _recentre(theta: np.ndarray, centre: np.ndarray, sign: int) -> np.ndarray:
    """Move each a_j by sign * p_j * centre_j: own units to centred logs (-1) and back (+1)."""
    k = len(centre)
    moved = theta.copy()
    moved[..., 1:1 + k] += sign * theta[..., 1 + k:] * centre
    return moved


def _fit_law(names: tuple[str, ...], inputs: np.ndarray, loss: np.ndarray, grid: np.ndarray,
             options: FitOptions) -> LawFit:
    """Fit log L = LSE(e, a_j - p_j·log x_j) to the rows of inputs (n, k) from the best points of
    the grid (rows e, a_j, p_j in the inputs' units), then refit each bootstrap resample."""
    log_x = np.log(inputs)
    centre = log_x.mean(axis=0)
    x = np.vstack([np.zeros(len(loss)), (log_x - centre).T])  # centred logs condition the problem
    log_loss, delta, n = np.log(loss), options.huber_delta, len(loss)
    grid = _recentre(grid, centre, -1)
    grid_huber = _huber(_log_predict(_terms(grid, x))[0] - log_loss, delta)[0]  # (starts, rows)
    ones = np.ones(n)
    theta, converged = _minimise(grid[np.argsort(grid_huber.sum(axis=1))[:FULL_STARTS]], x, log_loss,
                                 ones, delta)
    gradient_norm = float(np.linalg.norm(_objective(theta, x, log_loss, ones, delta)[1]))

    # A resample is the rows counted with multinomial weights; its grid losses are one product.
    counts = np.random.default_rng(options.seed).multinomial(n, np.full(n, 1 / n), size=options.resamples)
    ranked = np.argsort(grid_huber @ counts.T, axis=0)[:RETRY_STARTS].T  # (resamples, starts)
    # Each starts from the full-data optimum; if a term is dead there (E -> 0, say), its
    # parameters have no gradient and would stay put, so each also starts from its best grid point.
    dead = _log_predict(_terms(theta, x))[1].max(axis=-1).min() < DEAD_SHARE
    thetas = []
    for weights, starts in zip(counts.astype(float), ranked, strict=True):
        fitted, ok = _minimise(np.vstack([theta, grid[starts[:1]]]) if dead else theta[None],
                               x, log_loss, weights, delta)
        if not ok:
            fitted, ok = _minimise(grid[starts], x, log_loss, weights, delta)
        if ok:
            thetas.append(fitted)

    def own_units(theta: np.ndarray) -> np.ndarray:
        k = len(centre)
        theta = _recentre(theta, centre, 1)
        with np.errstate(over="ignore"):  # a wild resample's A may be past float range: inf
            return np.concatenate([np.exp(theta[..., :1 + k]), theta[..., 1 + k:]], axis=-1)

    estimate = own_units(theta)
    if not np.isfinite(estimate).all():
        overflowed = ", ".join(name for name, value in zip(names, estimate, strict=True)
                               if not np.isfinite(value))
        raise CrammitError(f"the fit is degenerate ({overflowed} past float range): these {n} runs do not "
                           "constrain the law")
    return LawFit(names, estimate, own_units(np.reshape(thetas, (-1, len(theta)))),
                  options.confidence, converged, gradient_norm, options.resamples - len(thetas),
                  log_residuals=log_loss - _log_predict(_terms(theta, x))[0])


def _as_columns(*columns: Any) -> list[np.ndarray]:
    return [np.asarray(column, float).ravel() for column in columns]


def fit_compute_law(flops: Any, loss: Any, options: FitOptions = FitOptions()) -> LawFit:
    """L(C) = E + A·C^-alpha through (flops, loss) points, usually a compute frontier."""
    flops, loss = _as_columns(flops, loss)
    if len(loss) < MIN_COMPUTE_POINTS:
        raise CrammitError(f"{len(loss)} compute-frontier points; L(C) needs at least {MIN_COMPUTE_POINTS}")
    # Starts: E a fraction of the lowest loss; A·C^-alpha at the mean log C a multiple of it.
    lowest, centre = loss.min(), np.log(flops).mean()
    grid = np.array([(np.log(lowest * share), np.log(lowest * reducible) + alpha * centre, alpha)
                     for share, reducible, alpha in itertools.product(
                         (0.1, 0.3, 0.5, 0.7, 0.9), (0.03, 0.1, 0.3, 1.0, 3.0),
                         (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))])
    return _fit_law(("E", "A", "alpha"), flops[:, None], loss, grid, options)


def fit_params_tokens_law(params: Any, tokens: Any, loss: Any, options: FitOptions = FitOptions()) -> LawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta through (params, tokens, loss) points (Chinchilla approach 3)."""
    params, tokens, loss = _as_columns(params, tokens, loss)
    distinct = len(np.unique(params)), len(np.unique(tokens))
    if len(loss) < MIN_PARAMS_TOKENS_POINTS or min(distinct) < 2:
        raise CrammitError(
            f"{len(loss)} points with {distinct[0]} distinct params and {distinct[1]} distinct tokens; "
            f"L(N, D) needs at least {MIN_PARAMS_TOKENS_POINTS} with 2 distinct params and 2 distinct tokens")
    exponents, logs = np.arange(0, 2.01, 0.5), np.arange(0, 26, 5.0)
    grid = np.array([(e, a, b, alpha, beta) for e, a, b, alpha, beta in itertools.product(
        np.arange(-1, 1.01, 0.5), logs, logs, exponents, exponents)])
    return _fit_law(("E", "A", "B", "alpha", "beta"), np.column_stack([params, tokens]), loss, grid, options)


def compute_frontier(flops: Any, loss: Any) -> np.ndarray:
    """Which points are on the compute frontier: lower loss than every other point with no
    more compute (the lower envelope of loss against FLOPs)."""
    flops, loss = _as_columns(flops, loss)
    cheaper = (flops[None, :] <= flops[:, None]) & ~np.eye(len(flops), dtype=bool)
    return ~(cheaper & (loss[None, :] <= loss[:, None])).any(axis=1)


def compute_optimal(fit: LawFit, flops: Any) -> dict[str, Interval]:
    """Params, tokens and loss of the compute-optimal model under C = 6·N·D implied by an L(N, D)
    fit, at each of `flops`, with intervals from the bootstrap samples."""
    sixth = np.atleast_1d(np.asarray(flops, float)) / 6  # N·D

    def allocate(params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e, a, b, alpha, beta = np.moveaxis(params, -1, 0)[..., None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
            n = g * sixth ** (beta / (alpha + beta))
            d = sixth ** (alpha / (alpha + beta)) / g
            return n, d, e + a / n**alpha + b / d**beta

    return {name: _interval(estimate, samples, fit.confidence)
            for name, estimate, samples in zip(("params", "tokens", "loss"), allocate(fit.estimate),
                                               allocate(fit.samples), strict=True)}


def load_table(path: Path) -> pd.DataFrame:
    """The study table at `path` (.csv or .parquet), checked and cleaned as `fit_study` fits it."""
    readers: dict[str, Callable[[Path], pd.DataFrame]] = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
    if path.suffix.lower() not in readers:
        raise CrammitError(f"cannot read study table {path}: expected a .csv or .parquet file")
    if not path.is_file():
        raise CrammitError(f"study table {path} does not exist")
    return _fittable(readers[path.suffix.lower()](path))


def _fittable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a law can be fitted to: status "ok" (where recorded), flops defaulting to
    6·params·tokens, setting to "all", and positive finite params, tokens, loss and flops."""
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise CrammitError(
            f"study table lacks column(s) {', '.join(missing)}: it needs one row per finished run "
            f"with params, tokens and loss (optional: flops, setting)")
    rows = table[table["status"] == "ok"].copy() if "status" in table.columns else table.copy()
    for column in REQUIRED_COLUMNS:
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    flops = pd.to_numeric(rows.get("flops", pd.Series(np.nan, index=rows.index)), errors="coerce")
    rows["flops"] = flops.fillna(6 * rows["params"] * rows["tokens"])
    rows["setting"] = rows["setting"].fillna("all").astype(str) if "setting" in rows else "all"
    values = rows[[*REQUIRED_COLUMNS, "flops"]].to_numpy(float)
    return rows[(np.isfinite(values) & (values > 0)).all(axis=1)].reset_index(drop=True)


def _named_budgets(rows: pd.DataFrame) -> dict[str, float]:
    """One and eight device-days in FLOPs at the rows' median measured throughput (none
    without device hours)."""
    hours = pd.to_numeric(rows.get("device_hours", pd.Series(np.nan, index=rows.index)), errors="coerce")
    measured = rows[hours > 0]
    if measured.empty:
        return {}
    throughput = float(np.median(measured["flops"] / hours[hours > 0]))
    if "device" not in measured:
        names = ("1 device-day", "8 device-days")
    elif (measured["device"] == "cuda").all():
        names = ("1 GPU-day", "8 GPU-days")
    else:
        names = ("1 CPU-worker-day", "8 CPU-worker-days")
    return {name: throughput * hours for name, hours in zip(names, NAMED_HOURS, strict=True)}


def _curve_flops(flops: pd.Series, budgets: dict[str, float]) -> np.ndarray:
    """Where curves are drawn: from half the least compute to twice the most, or the largest budget."""
    return np.geomspace(flops.min() / 2, max([2 * flops.max(), *budgets.values()]), CURVE_POINTS)


def _held_back(rows: pd.DataFrame) -> np.ndarray:
    """The largest budget's rows: per setting by `budget` where the table has it, else the rows
    at or above the FLOPs quantile."""
    if "budget" not in rows:
        return (rows["flops"] >= rows["flops"].quantile(HOLDOUT_QUANTILE)).to_numpy()
    held = pd.Series(False, index=rows.index)
    for _, setting in rows.groupby("setting"):
        by_compute = setting.groupby("budget")["flops"].median()  # the largest budget, whatever its type
        if len(by_compute):
            held[setting.index[setting["budget"] == by_compute.idxmax()]] = True
    return held.to_numpy()


def _number(value: Any) -> float | None:
    return float(value) if np.isfinite(value) else None


def _label(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    return None if value is None or pd.isna(value) else str(value)


def _json(interval: Interval) -> dict[str, float | None]:
    return {key: _number(value) for key, value in interval._asdict().items()}


def _json_each(interval: Interval) -> list[dict[str, float | None]]:
    """An interval of arrays as one JSON interval per element."""
    return [_json(Interval(*values)) for values in zip(*interval, strict=True)]


def _parameters(fit: LawFit) -> dict[str, dict[str, float | None]]:
    return {name: _json(fit.interval(name)) for name in fit.names}


def _residual_rms(fit: LawFit, inputs: Sequence[Any], loss: Any) -> float:
    return float(np.sqrt(np.mean((np.log(fit.predict(*inputs).estimate) - np.log(loss)) ** 2)))


def _allocations(fit: LawFit, flops: Sequence[float]) -> list[dict[str, Any]]:
    optimal = {name: _json_each(interval) for name, interval in compute_optimal(fit, flops).items()}
    return [{"flops": float(c), **{name: values[i] for name, values in optimal.items()}}
            for i, c in enumerate(flops)]


def _holdout(rows: pd.DataFrame, held: np.ndarray, target: np.ndarray,
             refit: Callable[[pd.DataFrame, FitOptions], LawFit], inputs: tuple[str, ...],
             options: FitOptions) -> dict[str, Any]:
    """Refit without the `held` rows and predict the `target` runs, with run intervals from fewer
    resamples."""
    if not target.any():
        return {"skipped": "no held-back run is on the compute frontier"}
    resamples = min(options.resamples, max(100, options.resamples // 4))
    try:
        fit = refit(rows[~held], dataclasses.replace(options, resamples=resamples))
    except CrammitError as error:
        return {"skipped": f"without the largest budget: {error}"}
    predicted = fit.predict_run(*(rows[column][target] for column in inputs), seed=options.seed)
    actual = rows["loss"][target].to_numpy()
    error = (predicted.estimate - actual) / actual
    covered = (predicted.low <= actual) & (actual <= predicted.high)
    held_out = [
        {"trial": _label(row, "trial"), **{column: float(row[column]) for column in inputs},
         "loss": float(row["loss"]), **interval, "relative_error": float(wrong), "covered": bool(inside)}
        for row, interval, wrong, inside
        in zip(rows[target].to_dict("records"), _json_each(predicted), error, covered, strict=True)]
    return {"held_out": held_out, "mean_abs_relative_error": float(np.abs(error).mean()),
            "coverage": float(covered.mean())}


def _frontier_fit(rows: pd.DataFrame, options: FitOptions) -> LawFit:
    frontier = compute_frontier(rows["flops"], rows["loss"])
    return fit_compute_law(rows["flops"][frontier], rows["loss"][frontier], options)


def _compute_section(rows: pd.DataFrame, options: FitOptions) -> dict[str, Any]:
    """L(C) on one setting's compute frontier, with its band, named budgets and holdout."""
    frontier = compute_frontier(rows["flops"], rows["loss"])

    def points(predicted: Sequence[float | None]) -> list[dict[str, Any]]:
        return [{"trial": _label(row, "trial"), "size": _label(row, "size"), "flops": float(row["flops"]),
                 "loss": float(row["loss"]), "predicted": None if value is None else float(value),
                 "frontier": bool(on)}
                for row, value, on in zip(rows.to_dict("records"), predicted, frontier, strict=True)]

    try:
        fit = _frontier_fit(rows, options)
    except CrammitError as error:
        return {"skipped": str(error), "points": points([None] * len(rows))}
    budgets, held = _named_budgets(rows), _held_back(rows)
    band = _curve_flops(rows["flops"], budgets)
    named = fit.predict(list(budgets.values()))
    return {
        "law": COMPUTE_LAW,
        "parameters": _parameters(fit),
        "converged": fit.converged,
        "failed_resamples": fit.failed_resamples,
        "residual_rms": _residual_rms(fit, [rows["flops"][frontier]], rows["loss"][frontier]),
        "points": points(fit.predict(rows["flops"]).estimate),
        "band": [{"flops": float(c), **interval} for c, interval in zip(band, _json_each(fit.predict(band)),
                                                                        strict=True)],
        "predictions": [{"name": name, "flops": c, **interval} for (name, c), interval
                        in zip(budgets.items(), _json_each(named), strict=True)],
        "holdout": _holdout(rows, held, held & frontier, _frontier_fit, ("flops",), options),
    }


def _params_tokens_fit(rows: pd.DataFrame, options: FitOptions) -> LawFit:
    return fit_params_tokens_law(rows["params"], rows["tokens"], rows["loss"], options)


def _params_tokens_section(rows: pd.DataFrame, options: FitOptions) -> dict[str, Any]:
    """L(N, D) over every run, with its compute-optimal allocation, named budgets and holdout."""
    try:
        fit = _params_tokens_fit(rows, options)
    except CrammitError as error:
        return {"skipped": str(error)}
    budgets, held = _named_budgets(rows), _held_back(rows)
    predicted = fit.predict(rows["params"], rows["tokens"]).estimate
    return {
        "law": PARAMS_TOKENS_LAW,
        "parameters": _parameters(fit),
        "converged": fit.converged,
        "failed_resamples": fit.failed_resamples,
        "residual_rms": _residual_rms(fit, [rows["params"], rows["tokens"]], rows["loss"]),
        "points": [{"trial": _label(row, "trial"), "setting": row["setting"], "size": _label(row, "size"),
                    **{column: float(row[column]) for column in ("params", "tokens", "flops", "loss")},
                    "predicted": float(value)}
                   for row, value in zip(rows.to_dict("records"), predicted, strict=True)],
        "compute_optimal": _allocations(fit, _curve_flops(rows["flops"], budgets)),
        "predictions": [{"name": name, **allocation} for name, allocation
                        in zip(budgets, _allocations(fit, list(budgets.values())), strict=True)],
        "holdout": _holdout(rows, held, held, _params_tokens_fit, ("params", "tokens"), options),
    }


def fit_study(table: pd.DataFrame, options: FitOptions = FitOptions()) -> dict[str, Any]:
    """Every fit of a study table, as the JSON-ready dict that fit.json holds: the options, the
    number of usable runs, "compute" (L(C) per setting: parameters, points, band, predictions at
    named budgets, holdout) and "params_tokens" (L(N, D): parameters, points, compute-optimal
    allocations, predictions, holdout); a part that cannot be fitted says why under "skipped"."""
    rows = _fittable(table)
    # The optimiser's vectors are a handful of numbers: BLAS threads only contend for the cores.
    with threadpool_limits(1, user_api="blas"):
        compute = {str(setting): _compute_section(group.reset_index(drop=True), options)
                   for setting, group in rows.groupby("setting", sort=True)}
        params_tokens = _params_tokens_section(rows, options)
    if "skipped" in params_tokens and all("skipped" in section for section in compute.values()):
        reasons = [f"L(N, D): {params_tokens['skipped']}"] + [
            f"L(C) of {setting}: {section['skipped']}" for setting, section in compute.items()]
        raise CrammitError(f"no scaling law can be fitted to {len(rows)} usable runs ({'; '.join(reasons)})")
    return {
        "options": dataclasses.asdict(options),
        "table_points": len(rows),
        "compute": compute,
        "params_tokens": params_tokens,
    }


def write_fit(path: Path, fit: dict[str, Any]) -> None:
    """Write a `fit_study` result as JSON, atomically."""
    write_json(path, fit)
