"""Time of crammit's L(N, D) fit with bootstrap intervals against the published procedure.

Both minimise the same summed Huber loss (delta 1e-3) of log residuals on the same synthetic
study: L(N, D) = 1.8 + 400 / N^0.34 + 2000 / D^0.37 with 3 % log-normal noise on a grid of
model sizes (1e6-1e10) x token counts (1e7-1e12). The baseline is the published procedure
(Hoffmann et al. 2022, approach 3, as Besiroglu et al. 2024 replicate it): scipy's L-BFGS-B
with finite-difference gradients and default tolerances, started from every one of the
4,500 grid points, keeping the best; its objective is plain numpy on precomputed logs (with
scipy.special.logsumexp, as published, each evaluation is ~9x slower). crammit
(`fit_params_tokens_law`) starts L-BFGS with an analytic gradient from the 8 best grid points,
then refits every bootstrap resample.

    python benchmarks/fit.py
    python benchmarks/fit.py --resamples 1000 --baseline-fits 1 --baseline-stride 1
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

from crammit.study.laws import FitOptions, fit_params_tokens_law

TRUTH = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
NOISE = 0.03
DELTA = 1e-3
T = TypeVar("T")


def study(sizes: int, counts: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    params, tokens = (grid.ravel() for grid in np.meshgrid(np.geomspace(1e6, 1e10, sizes),
                                                             np.geomspace(1e7, 1e12, counts)))
    loss = TRUTH["E"] + TRUTH["A"] / params ** TRUTH["alpha"] + TRUTH["B"] / tokens ** TRUTH["beta"]
    return params, tokens, loss * np.exp(NOISE * np.random.default_rng(seed).standard_normal(loss.shape))


def published_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                        log_loss: np.ndarray) -> float:
    """Summed Huber loss of LSE(a - alpha log N, b - beta log D, e) - log L, as published."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full(len(log_loss), e)])
    top = terms.max(axis=0)
    return float(huber(DELTA, top + np.log(np.exp(terms - top).sum(axis=0)) - log_loss).sum())


def published_fit(logs: tuple[np.ndarray, ...], stride: int) -> tuple[np.ndarray, int]:
    """Best of L-BFGS-B (finite differences, defaults) from every `stride`-th point of
    Chinchilla's grid (a, b, e, alpha, beta), and how many starts that was."""
    exponents, coefficients = np.arange(0, 2.01, 0.5), np.arange(0, 26, 5.0)
    grid = list(itertools.product(coefficients, coefficients, np.arange(-1, 1.01, 0.5), exponents, exponents))
    best, best_value = None, np.inf
    for start in grid[::stride]:
        result = minimize(published_objective, start, args=logs, method="L-BFGS-B")
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    return best, len(grid[::stride])


def timed(work: Callable[[], T]) -> tuple[T, np.ndarray]:
    """What `work` returns, and the wall-clock and CPU seconds it took (the machine may be shared)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, np.array([time.perf_counter() - wall, time.process_time() - cpu])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, default=10, help="model sizes in the synthetic study")
    parser.add_argument("--counts", type=int, default=25, help="token counts per size")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--baseline-fits", type=int, default=1, help="published fits to time")
    parser.add_argument("--baseline-stride", type=int, default=1,
                        help="start the published fit from every n-th grid point only; its time is then "
                             "scaled to all 4,500")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    params, tokens, loss = study(args.sizes, args.counts, args.seed)
    logs = (np.log(params), np.log(tokens), np.log(loss))
    point_fit, point_s = timed(lambda: fit_params_tokens_law(params, tokens, loss, FitOptions(resamples=1)))
    ours, ours_s = timed(lambda: fit_params_tokens_law(
        params, tokens, loss, FitOptions(resamples=args.resamples, seed=args.seed)))
    runs = [timed(lambda: published_fit(logs, args.baseline_stride)) for _ in range(args.baseline_fits)]
    (theirs, starts), _ = runs[-1]
    theirs_s = sum(seconds for _, seconds in runs) * 4500 / starts  # the whole grid's time

    print(f"\nL(N, D) on {len(loss)} synthetic points, {NOISE:.0%} noise; {args.resamples} bootstrap "
          f"resamples ({ours.failed_resamples} failed, {ours.degenerate_resamples} degenerate); identified: "
          f"{', '.join(name for name in ours.names if ours.identified(name).identified) or 'none'}")
    if starts < 4500:
        print(f"published fit timed on {starts} of its 4,500 starts and scaled to all of them")
    print(f"{'procedure':<46}{'fits':>6}{'wall s':>9}{'CPU s':>9}{'wall s/fit':>12}{'ratio':>9}"
          f"{'CPU ratio':>11}")
    baseline = theirs_s / args.baseline_fits  # wall and CPU seconds per fit
    for name, fits, (wall, cpu) in (
            ("published: FD gradients, 4,500 starts (base.)", args.baseline_fits, theirs_s),
            ("crammit: analytic gradient, 8 best starts", 1, point_s),
            (f"crammit: + {args.resamples} bootstrap refits", 1 + args.resamples, ours_s)):
        ratio = baseline * fits / (wall, cpu)
        print(f"{name:<46}{fits:>6}{wall:>9.2f}{cpu:>9.2f}{wall / fits:>12.4f}{ratio[0]:>9.1f}"
              f"{ratio[1]:>11.1f}")

    a, b, e, alpha, beta = theirs
    published = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}
    print(f"\n{'parameter':<12}{'truth':>10}{'published':>12}{'crammit':>12}{'crammit 95 % interval':>26}")
    for name, truth in TRUTH.items():
        low, high = ours.interval(name).low, ours.interval(name).high
        print(f"{name:<12}{truth:>10.4g}{published[name]:>12.5g}{ours.interval(name).estimate:>12.5g}"
              f"{f'[{low:.4g}, {high:.4g}]':>26}")
    mine = point_fit.estimate
    ours_theta = [np.log(mine[1]), np.log(mine[2]), np.log(mine[0]), mine[3], mine[4]]
    print(f"{'objective':<12}{'':>10}{published_objective(theirs, *logs):>12.7g}"
          f"{published_objective(np.array(ours_theta), *logs):>12.7g}")


if __name__ == "__main__":
    main()
