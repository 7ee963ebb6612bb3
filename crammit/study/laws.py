"""The scaling-law estimator: L = E + sum_j A_j * x_j^-p_j fitted to runs, with bounds,
bootstrap intervals and a verdict on which parameters the runs identify.

Both laws are a log-sum-exp of terms linear in log inputs, log L = LSE(e, a_j - p_j·log x_j),
fitted as Hoffmann et al. (2022, approach 3) did and Besiroglu et al. (2024) corrected: the
summed Huber loss of log residuals, minimised by L-BFGS-B to convergence from the best points
of a grid (see shared/SCALING.md).

The parameters are bounded, so that no design can drive a law to a negative exponent or a
coefficient past float range: exponents in [0, EXPONENT_MAX]; E from 0 (a floor far below
every loss) to the highest loss; each term, at the mean of the log inputs, from nothing to a
few times the highest loss. A parameter the fit or its resamples push onto a bound is not
identified by the runs (`Identification`), and its interval is one-sided or absent: at a
bound the percentile bootstrap is not an interval.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import minimize

from crammit.errors import ConfigError, CrammitError

# One more distinct run than parameters, at least. With just one more, a Huber fit passes
# through all runs but one and the resamples that keep them all may all give the same law:
# `_clear_of_bounds` then flags the parameters rather than print an interval of no width.
MIN_COMPUTE_POINTS = 4
MIN_PARAMS_TOKENS_POINTS = 6
EXPONENT_MAX = 2.0  # steeper than 1/x^2 is no scaling law of language models
E_FLOOR = 1e-6  # E's lower bound as a share of the lowest loss: E = 0 for every purpose
TERM_FLOOR = 1e-6  # a term's lower bound at the centre, as a share of the lowest loss: the term is gone
TERM_CEILING = 8.0  # a term's upper bound at the centre, as a multiple of the highest loss
SAME = 1e-9  # resamples within this relative spread gave one value: no interval
ON_BOUND = 1e-4  # a parameter this close to a bound (log units; exponent units) sits on it
RETRY_STARTS = 4  # best grid points (under its weights) a resample is refitted from if its fit fails


@dataclass(frozen=True)
class FitOptions:
    """How laws are fitted: bootstrap resamples, interval confidence, Huber threshold, seed,
    which parameter count is N (`total`, or `non-embedding` as Kaplan et al. count it), and
    from how many of the grid's best points the full-data fit starts."""

    resamples: int = 1000
    confidence: float = 0.95
    huber_delta: float = 1e-3
    seed: int = 0
    params: str = "total"
    starts: int = 8  # best grid points the full-data fit starts from

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ConfigError("resamples", "must be at least 1", self.resamples)
        if not 0 < self.confidence < 1:
            raise CrammitError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.huber_delta > 0:
            raise CrammitError(f"huber_delta must be positive, got {self.huber_delta}")
        if self.starts < 1:
            raise CrammitError(f"starts must be at least 1, got {self.starts}")
        if self.params not in PARAMS_COLUMNS:
            raise ConfigError("params", f"must be one of {', '.join(PARAMS_COLUMNS)}", repr(self.params),
                              subject="parameter count")

    @property
    def params_column(self) -> str:
        return PARAMS_COLUMNS[self.params]

    @property
    def tail(self) -> float:
        """The share of resamples beyond each end of a two-sided interval."""
        return (1 - self.confidence) / 2


PARAMS_COLUMNS = {"total": "params", "non-embedding": "non_embedding_params"}


class Interval(NamedTuple):
    """An estimate and its bootstrap interval (floats or arrays alike); a side the runs do
    not bound is NaN."""

    estimate: Any
    low: Any
    high: Any


class Identification(NamedTuple):
    """Whether the runs pin a parameter down; if not, why, and which bound it sits on."""

    identified: bool
    reason: str = ""
    bound: str = ""  # "lower" or "upper": the interval is one-sided, the other side the bound


class Noise(NamedTuple):
    """The scatter of one run's log loss about the law: its standard deviation, its degrees
    of freedom and where it comes from."""

    sigma: float
    dof: int
    source: str  # "repeated trials" or "residuals"


@dataclass(frozen=True, eq=False)
class LawFit:
    """A fitted law L = E + sum_j A_j * x_j^-p_j: its parameters (E, the A_j, the p_j) in the
    inputs' own units, their bootstrap samples, which of them the runs identify, and how the
    optimiser and the resamples ended."""

    names: tuple[str, ...]
    estimate: np.ndarray  # (parameters,)
    samples: np.ndarray  # (valid resamples, parameters)
    identification: tuple[Identification, ...]
    confidence: float
    gradient_norm: float  # of the summed Huber objective at the estimate (normalised inputs)
    failed_resamples: int  # the optimiser did not converge
    degenerate_resamples: int  # no more distinct runs than parameters: not refitted
    log_residuals: np.ndarray  # log observed - log fitted, at the points the law was fitted on
    log_loss_spread: float  # sum of squares of log loss about its mean, for R²

    def identified(self, name: str) -> Identification:
        return self.identification[self.names.index(name)]

    def interval(self, name: str) -> Interval:
        """A percentile interval where the parameter is identified; one-sided (the bound on
        the other side) where it sits on a bound; none where it has no meaning of its own."""
        column = self.names.index(name)
        estimate, samples = self.estimate[column], self.samples[:, column]
        verdict = self.identification[column]
        if verdict.identified:
            return percentile_interval(estimate, samples, self.confidence)
        if verdict.bound == "lower":
            return Interval(estimate, _lower_bound(name), _quantile(samples, self.confidence))
        if verdict.bound == "upper":
            return Interval(estimate, _quantile(samples, 1 - self.confidence), _upper_bound(name))
        return Interval(estimate, np.nan, np.nan)

    def evaluate(self, *inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Loss at the inputs (C; or N and D) under the estimate (m,) and each resample (resamples, m)."""
        log_x = _log_inputs(inputs)
        return _evaluate(self.estimate, log_x), _evaluate(self.samples, log_x)

    def predict(self, *inputs: Any) -> Interval:
        """Loss at the inputs, with the interval of the law itself, as arrays."""
        return percentile_interval(*self.evaluate(*inputs), self.confidence)

    def predict_run(self, *inputs: Any, noise: Noise, seed: int = 0) -> Interval:
        """Where one more run at the inputs lands: each bootstrap law's prediction times a
        draw of the run-to-run scatter (a t distribution, since sigma is itself estimated), so
        the interval holds a new run's noise, symmetrically in log loss, as well as the law's
        uncertainty."""
        estimate, laws = self.evaluate(*inputs)
        draws = noise.sigma * np.random.default_rng(seed).standard_t(noise.dof, size=laws.shape)
        return percentile_interval(estimate, laws * np.exp(draws), self.confidence)

    def fit_quality(self) -> dict[str, float]:
        """RMSE of the log residuals, and R² of log loss (the share of its variance the law explains)."""
        squares = float(np.sum(self.log_residuals**2))
        return {"rmse_log": float(np.sqrt(squares / len(self.log_residuals))),
                "r2_log": 1 - squares / self.log_loss_spread if self.log_loss_spread > 0 else float("nan")}

    def residual_noise(self) -> Noise | None:
        """sigma from the residuals, sqrt(sum r² / (n - p)): inflated for the parameters fitted,
        and never zero where the Huber fit passes through p points. None without dof left."""
        dof = len(self.log_residuals) - len(self.names)
        if dof < 1:
            return None
        return Noise(float(np.sqrt(np.sum(self.log_residuals**2) / dof)), dof, "residuals")


def _lower_bound(name: str) -> float:
    """The lower bound a parameter sits on, in its own units (E's floor is 0 for every purpose)."""
    return 0.0 if name == "E" or name in EXPONENTS else np.nan


def _upper_bound(name: str) -> float:
    return EXPONENT_MAX if name in EXPONENTS else np.nan


EXPONENTS = ("alpha", "beta")


def _log_inputs(inputs: Sequence[Any]) -> np.ndarray:
    return np.log(np.column_stack([np.atleast_1d(np.asarray(x, float)) for x in inputs]))


def _evaluate(params: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """The law's loss for parameter rows (..., 1 + 2k) at log inputs (m, k): shape (..., m)."""
    k = log_x.shape[1]
    log_a, power = np.log(params[..., None, 1:1 + k]), params[..., None, 1 + k:]
    return params[..., :1] + np.exp(log_a - power * log_x).sum(axis=-1)


def _quantile(samples: np.ndarray, level: float) -> float:
    return float(np.quantile(samples, level)) if len(samples) else np.nan


def percentile_interval(estimate: Any, samples: np.ndarray, confidence: float) -> Interval:
    """Percentile interval over the samples' first axis."""
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
# log L = LSE(e - 0, a_j - p_j * x_j): a_j is the log of term j at the centre. Terms run along
# axis -2: reducing over a few long rows is several times faster than over many short ones.

def _terms(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The LSE's terms for parameter rows theta (..., 1 + 2k) at x (1 + k, n): (..., 1 + k, n)."""
    k = x.shape[0] - 1
    powers = np.concatenate([np.zeros_like(theta[..., :1]), theta[..., 1 + k:]], axis=-1)
    return theta[..., :1 + k, None] - powers[..., :, None] * x


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The Huber loss of each residual, and its derivative."""
    slope = np.clip(r, -delta, delta)
    return slope * (r - 0.5 * slope), slope


def _log_predict(terms: np.ndarray) -> np.ndarray:
    """log-sum-exp over the terms (axis -2)."""
    top = terms.max(axis=-2, keepdims=True)
    return (top + np.log(np.exp(terms - top).sum(axis=-2, keepdims=True)))[..., 0, :]


def _objective(theta: np.ndarray, x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Weighted sum of Huber losses of log residuals, and its gradient."""
    terms = _terms(theta, x)
    top = terms.max(axis=0, keepdims=True)
    exps = np.exp(terms - top)
    total = exps.sum(axis=0, keepdims=True)
    huber, slope = _huber((top + np.log(total))[0] - log_loss, delta)
    # Sums, not matrix products: BLAS threads cost more than they give at this size.
    weighted = (exps / total) * (weights * slope)
    gradient = np.concatenate([weighted.sum(axis=1), -(weighted[1:] * x[1:]).sum(axis=1)])
    return float((weights * huber).sum()), gradient


class _Optimum(NamedTuple):
    theta: np.ndarray
    converged: bool
    reason: str  # why it did not converge


def _minimise(starts: np.ndarray, x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
              delta: float, bounds: list[tuple[float, float]]) -> _Optimum:
    """L-BFGS-B from each start; the lowest converged optimum (or the lowest, unconverged).
    An optimiser that did not move from its start has stopped on a flat objective, not at
    an optimum: that is not convergence."""
    best, best_value, best_converged, best_reason = starts[0], np.inf, False, "no start"
    for start in starts:
        result = minimize(_objective, start, args=(x, log_loss, weights, delta), jac=True, bounds=bounds,
                          method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9})
        converged = bool(result.success and np.isfinite(result.fun) and result.nit > 0)
        reason = ("" if converged else "the optimiser did not move from its start (a flat objective)"
                  if result.nit == 0 else f"the optimiser stopped: {result.message}")
        if (converged, -result.fun) > (best_converged, -best_value):
            best, best_value, best_converged, best_reason = result.x, result.fun, converged, reason
    return _Optimum(best, best_converged, best_reason)


def _recentre(theta: np.ndarray, centre: np.ndarray, sign: int) -> np.ndarray:
    """Move each a_j by sign * p_j * centre_j: own units to centred logs (-1) and back (+1)."""
    k = len(centre)
    moved = theta.copy()
    moved[..., 1:1 + k] += sign * theta[..., 1 + k:] * centre
    return moved


def _bounds(loss: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of theta = (e, a_j, p_j) in normalised coordinates."""
    low_loss, high_loss = np.log(loss.min()), np.log(loss.max())
    lower = np.array([low_loss + np.log(E_FLOOR), *[low_loss + np.log(TERM_FLOOR)] * k, *[0.0] * k])
    upper = np.array([high_loss, *[high_loss + np.log(TERM_CEILING)] * k, *[EXPONENT_MAX] * k])
    return lower, upper


def _identify(names: tuple[str, ...], theta: np.ndarray, thetas: np.ndarray, lower: np.ndarray,
              upper: np.ndarray, tail: float) -> tuple[Identification, ...]:
    """Each parameter's verdict. On a bound in the fit, or in more than `tail` of the
    resamples (so the percentile interval would reach it): not identified; and none is
    identified from too few usable resamples for an interval. A coefficient
    A_j needs its exponent identified (A_j·x^-p_j means nothing without p_j); E needs every
    exponent off zero (at p_j = 0 the term is a constant that trades with E)."""
    k = (len(names) - 1) // 2
    needed = usable_resamples_needed(tail)
    if len(thetas) < needed:
        return tuple(Identification(False, f"only {len(thetas)} resamples were usable; a {1 - 2 * tail:.0%} "
                                           f"interval needs at least {needed}") for _ in names)
    verdicts = []
    for column, name in enumerate(names):
        at_lower = np.abs(thetas[:, column] - lower[column]) < ON_BOUND
        at_upper = np.abs(thetas[:, column] - upper[column]) < ON_BOUND
        what = _bound_names(name)
        if abs(theta[column] - lower[column]) < ON_BOUND:
            verdicts.append(Identification(False, f"on its lower bound, {what[0]}", "lower"))
        elif abs(theta[column] - upper[column]) < ON_BOUND:
            verdicts.append(Identification(False, f"on its upper bound, {what[1]}", "upper"))
        elif at_lower.mean() > tail:
            verdicts.append(Identification(False, f"{at_lower.mean():.0%} of resamples put it on its lower "
                                                  f"bound, {what[0]}", "lower"))
        elif at_upper.mean() > tail:
            verdicts.append(Identification(False, f"{at_upper.mean():.0%} of resamples put it on its upper "
                                                  f"bound, {what[1]}", "upper"))
        else:
            verdicts.append(_clear_of_bounds(name, thetas[:, column], lower[column], upper[column], tail))
    for j in range(k):
        exponent, coefficient = verdicts[1 + k + j], verdicts[1 + j]
        if coefficient.identified and not exponent.identified:
            verdicts[1 + j] = Identification(False, f"its exponent {names[1 + k + j]} is not identified")
        if verdicts[0].identified and exponent.bound == "lower":
            verdicts[0] = Identification(False, f"{names[1 + k + j]} reaches 0, where its term is a "
                                                "constant that trades with E")
    return tuple(verdicts)


def _clear_of_bounds(name: str, samples: np.ndarray, lower: float, upper: float,
                     tail: float) -> Identification:
    """An interval of no width says nothing. E and the exponents have bounds with a meaning
    (no floor, no decay, the cap): their interval must stay clear of them by half its width,
    or the runs have not told the parameter from its bound. A coefficient's own bounds are
    only guards; its verdict follows its exponent's."""
    own = np.exp(samples) if name == "E" else samples
    low, high = np.quantile(own, [tail, 1 - tail])
    if high - low <= SAME * max(abs(float(np.median(own))), SAME):
        return Identification(False, "every usable resample gives the same value: too few runs for the "
                                     "bootstrap to vary")
    if name != "E" and name not in EXPONENTS:
        return Identification(True)
    margin = (high - low) / 2
    floor, cap = (0.0, np.exp(upper)) if name == "E" else (lower, upper)
    if low - floor < margin:
        return Identification(False, f"its interval [{low:.2g}, {high:.2g}] is not clear of {floor:g} by "
                                     "half its width", "lower")
    if name in EXPONENTS and cap - high < margin:
        return Identification(False, f"its interval [{low:.2g}, {high:.2g}] is not clear of {cap:g} by "
                                     "half its width", "upper")
    return Identification(True)


def usable_resamples_needed(tail: float) -> int:
    """Resamples a percentile interval needs: at least one beyond each end."""
    return int(np.ceil(1 / tail))


def _bound_names(name: str) -> tuple[str, str]:
    if name == "E":
        return "E = 0", "E = the highest loss"
    if name in EXPONENTS:
        return f"{name} = 0", f"{name} = {EXPONENT_MAX:g}"
    return "the term vanishes", "the term exceeds every loss"


def _fit_law(names: tuple[str, ...], inputs: np.ndarray, loss: np.ndarray, grid: np.ndarray,
             options: FitOptions, configurations: np.ndarray | None) -> LawFit:
    """Fit log L = LSE(e, a_j - p_j·log x_j) to the rows of inputs (n, k) from the best points of
    the grid (rows e, a_j, p_j in the inputs' units), then refit each bootstrap resample that
    has more distinct rows than the law has parameters. A resample draws whole
    configurations (each row's label in `configurations`; default: each row its own), so
    the scatter between seeds of one configuration enters the intervals."""
    log_x = np.log(inputs)
    centre = log_x.mean(axis=0)
    x = np.vstack([np.zeros(len(loss)), (log_x - centre).T])  # centred logs condition the problem
    log_loss, delta, n = np.log(loss), options.huber_delta, len(loss)
    lower, upper = _bounds(loss, len(centre))
    bounds = list(zip(lower, upper, strict=True))
    grid = np.unique(np.clip(_recentre(grid, centre, -1), lower, upper), axis=0)
    grid_huber = _huber(_log_predict(_terms(grid, x)) - log_loss, delta)[0]  # (starts, rows)
    ones = np.ones(n)
    starts = grid[np.argsort(grid_huber.sum(axis=1))[:options.starts]]
    best = _minimise(starts, x, log_loss, ones, delta, bounds)
    if not best.converged:
        raise CrammitError(f"not converged: {best.reason}")
    theta = best.theta
    gradient_norm = float(np.linalg.norm(_objective(theta, x, log_loss, ones, delta)[1]))

    # A resample is the rows counted with multinomial weights; its grid losses are one product.
    members = np.unique(np.arange(n) if configurations is None else configurations, return_inverse=True)[1]
    drawn = np.random.default_rng(options.seed).multinomial(
        members.max() + 1, np.full(members.max() + 1, 1 / (members.max() + 1)), size=options.resamples)
    counts = drawn[:, members]  # each row counted as often as its configuration was drawn
    distinct = np.array([len(np.unique(inputs[row > 0], axis=0)) for row in counts])
    counts = counts[distinct > len(names)]  # as many rows as parameters: interpolated, no residual left
    ranked = np.argsort(grid_huber @ counts.T, axis=0)[:RETRY_STARTS].T  # (resamples, starts)
    # Each starts from the full-data optimum; where a parameter sits on a bound there, it has
    # no gradient to leave it, so each also starts from its own best grid point.
    stuck = bool(((np.abs(theta - lower) < ON_BOUND) | (np.abs(theta - upper) < ON_BOUND)).any())
    thetas = []
    for weights, starts in zip(counts.astype(float), ranked, strict=True):
        fitted = _minimise(np.vstack([theta, grid[starts[:1]]]) if stuck else theta[None],
                           x, log_loss, weights, delta, bounds)
        if not fitted.converged:
            fitted = _minimise(grid[starts], x, log_loss, weights, delta, bounds)
        if fitted.converged:
            thetas.append(fitted.theta)
    thetas = np.reshape(thetas, (-1, len(theta)))

    def own_units(theta: np.ndarray) -> np.ndarray:
        k = len(centre)
        moved = _recentre(theta, centre, 1)
        own = np.concatenate([np.exp(moved[..., :1 + k]), moved[..., 1 + k:]], axis=-1)
        floored = np.abs(theta[..., 0] - lower[0]) < ON_BOUND
        own[..., 0] = np.where(floored, 0.0, own[..., 0])  # E's floor is 0 for every purpose
        return own

    residuals = log_loss - _log_predict(_terms(theta, x))
    return LawFit(names, own_units(theta), own_units(thetas),
                  _identify(names, theta, thetas, lower, upper, options.tail), options.confidence,
                  gradient_norm, failed_resamples=len(counts) - len(thetas),
                  degenerate_resamples=options.resamples - len(counts), log_residuals=residuals,
                  log_loss_spread=float(np.sum((log_loss - log_loss.mean()) ** 2)))


def compute_frontier(flops: Any, loss: Any) -> np.ndarray:
    """Which points are on the compute frontier: no other point has no more compute and a
    lower loss, or less compute and no higher loss (ties are all on it)."""
    flops, loss = (np.asarray(column, float).ravel() for column in (flops, loss))
    no_more = flops[None, :] <= flops[:, None]
    less = flops[None, :] < flops[:, None]
    beaten = (no_more & (loss[None, :] < loss[:, None])) | (less & (loss[None, :] <= loss[:, None]))
    return ~beaten.any(axis=1)


def _as_columns(*columns: Any) -> list[np.ndarray]:
    return [np.asarray(column, float).ravel() for column in columns]


def fit_compute_law(flops: Any, loss: Any, options: FitOptions = FitOptions(),
                    configurations: Any = None) -> LawFit:
    """L(C) = E + A·C^-alpha through (flops, loss) points, usually a compute frontier;
    `configurations` labels repeated runs of one configuration (seeds), resampled together."""
    flops, loss = _as_columns(flops, loss)
    if len(np.unique(flops)) < MIN_COMPUTE_POINTS:
        raise CrammitError(f"{len(np.unique(flops))} distinct compute values; L(C) needs at least "
                           f"{MIN_COMPUTE_POINTS}")
    # Starts: E a fraction of the lowest loss; A·C^-alpha at the mean log C a multiple of it.
    lowest, centre = loss.min(), np.log(flops).mean()
    grid = np.array([(np.log(lowest * share), np.log(lowest * reducible) + alpha * centre, alpha)
                     for share, reducible, alpha in itertools.product(
                         (0.1, 0.3, 0.5, 0.7, 0.9), (0.03, 0.1, 0.3, 1.0, 3.0),
                         (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))])
    return _fit_law(("E", "A", "alpha"), flops[:, None], loss, grid, options, _labels(configurations))


def fit_params_tokens_law(params: Any, tokens: Any, loss: Any, options: FitOptions = FitOptions(),
                          configurations: Any = None) -> LawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta through (params, tokens, loss) points (Chinchilla
    approach 3); `configurations` as for `fit_compute_law`."""
    params, tokens, loss = _as_columns(params, tokens, loss)
    distinct = len(np.unique(params)), len(np.unique(tokens))
    pairs = len(np.unique(np.column_stack([params, tokens]), axis=0))
    if pairs < MIN_PARAMS_TOKENS_POINTS or min(distinct) < 2:
        raise CrammitError(
            f"{pairs} distinct (N, D) points with {distinct[0]} distinct params and {distinct[1]} distinct "
            f"tokens; L(N, D) needs at least {MIN_PARAMS_TOKENS_POINTS} with 2 distinct params and 2 "
            "distinct tokens")
    exponents, logs = np.arange(0, 2.01, 0.5), np.arange(0, 26, 5.0)
    grid = np.array([(e, a, b, alpha, beta) for e, a, b, alpha, beta in itertools.product(
        np.arange(-1, 1.01, 0.5), logs, logs, exponents, exponents)])
    return _fit_law(("E", "A", "B", "alpha", "beta"), np.column_stack([params, tokens]), loss, grid, options,
                    _labels(configurations))


def _labels(configurations: Any) -> np.ndarray | None:
    return None if configurations is None else np.asarray(configurations).ravel()
