"""What a planned study will be able to conclude, before it spends anything: its design (the
trials' N, D and FLOPs) simulated from a reference law with run-to-run noise, each simulated
study fitted with the same code as the real fit — its bootstrap intervals and its
identification rule — and the mean half-width over the simulated studies read as the
interval the real study can expect. (The spread of point estimates across simulated
studies is cheaper, but the bootstrap of a small study is wider than that spread, and the
plan must say what the study will print.) A parameter most simulated studies do not
identify is one the design will likely not identify.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from crammit.errors import CrammitError
from crammit.io import read_json
from crammit.study.allocation import FlopsPerToken, allocate
from crammit.study.fit import named_budgets
from crammit.study.laws import (
    FitOptions,
    compute_frontier,
    fit_compute_law,
    fit_params_tokens_law,
)

DEFAULT_NOISE = 0.015  # run-to-run scatter of final loss, relative, where a study has no seeds yet
SIMULATED_STUDIES = 5  # each fitted with its bootstrap, as the real study will be
SIMULATED_RESAMPLES = 100  # enough that a small design keeps the 40 usable ones an interval needs
CONFIDENCE = 0.95
LAW_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class ReferenceLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta that a plan's simulated studies are drawn from."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: Any, tokens: Any) -> np.ndarray:
        params, tokens = np.asarray(params, float), np.asarray(tokens, float)
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def describe(self) -> str:
        return (f"{self.source}: E {self.E:.4g}, A {self.A:.4g}, B {self.B:.4g}, alpha {self.alpha:.3g}, "
                f"beta {self.beta:.3g}")


CHINCHILLA = ReferenceLaw(1.69, 406.4, 410.7, 0.34, 0.28, "Chinchilla's published law (Hoffmann et al. 2022)")


def reference_law(text: str | None) -> ReferenceLaw:
    """`--reference-law`: five numbers E,A,B,alpha,beta, a fit.json whose L(N, D) is
    identified, or (None) Chinchilla's published law."""
    if not text:
        return CHINCHILLA
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        return _law_from_fit(path)
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(LAW_NAMES) or not all(math.isfinite(v) and v > 0 for v in values):
        raise CrammitError("--reference-law: expected E,A,B,alpha,beta (five positive numbers) or a "
                           f"fit.json, got {text!r}")
    return ReferenceLaw(*values, source="the given law")


def _law_from_fit(path: Path) -> ReferenceLaw:
    if not path.is_file():
        raise CrammitError(f"--reference-law: {path} does not exist")
    try:
        fitted = read_json(path)
    except ValueError:
        raise CrammitError(f"--reference-law: {path} is not a fit.json") from None
    for name, law in (fitted.get("params_tokens") or {}).items() if isinstance(fitted, dict) else ():
        parameters = law.get("parameters", {})
        if parameters and all(parameters[key]["identified"] for key in LAW_NAMES):
            return ReferenceLaw(*(parameters[key]["estimate"] for key in LAW_NAMES),
                                source=f"the L(N, D) of {name} in {path}")
    raise CrammitError(f"--reference-law: {path} holds no L(N, D) whose parameters are all identified")


@dataclass(frozen=True)
class Precision:
    """A design's expected 95 % half-widths and what it will not identify."""

    half_widths: dict[str, float | None]  # by name: "alpha", "beta", "E", "L(C) alpha", "loss at <budget>"
    unidentified: dict[str, str]  # name -> why, in words
    law: ReferenceLaw
    noise: float
    noise_source: str
    studies: int

    def lines(self) -> list[str]:
        widths = ", ".join(f"{name} {width_text(value)}" for name, value in self.half_widths.items())
        lines = [f"expected precision ({self.studies} simulated studies of this design from "
                 f"{self.law.describe()}, {self.noise:.1%} run noise from {self.noise_source}): "
                 f"95 % half-widths {widths}"]
        if self.unidentified:
            lines.append("this design will likely not identify: " + "; ".join(
                f"{name} ({why})" for name, why in self.unidentified.items()))
        return lines


def width_text(value: float | None) -> str:
    if value is None:
        return "n/a (not fitted)"
    return "unbounded" if not np.isfinite(value) else f"±{value:.2g}"


@contextlib.contextmanager
def simulation_pool() -> Iterator[Executor]:
    """Processes, one a core, for simulated studies and the other independent fits of a plan:
    one pool serves a whole plan, since each process pays its imports once. Spawned, not
    forked: the planning process may hold Ray's or torch's threads. On one core, this process."""
    cores = os.cpu_count() or 1
    if cores < 2:
        yield _InProcess()
        return
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


class _InProcess(Executor):
    """Runs each call here, when it is submitted: the pool of a single core."""

    def submit(self, function, /, *args, **kwargs) -> Future:
        future = Future()
        future.set_result(function(*args, **kwargs))
        return future


def expected_precision(design: pd.DataFrame, law: ReferenceLaw, noise: float, noise_source: str,
                       named: dict[str, float], studies: int = SIMULATED_STUDIES,
                       resamples: int = SIMULATED_RESAMPLES, seed: int = 0,
                       pool: Executor | None = None) -> Precision:
    """Simulate `studies` studies of `design` (rows: params, tokens, flops; one per trial,
    seeds included) from `law` with `noise`, fit each as a study is fitted (L(N, D) where the
    design has two sizes or more, L(C) on the frontier; bootstrap intervals and the
    identification rule), and return the mean 95 % half-widths of alpha, beta, E, L(C)'s
    alpha and the predicted loss at each `named` budget (FLOPs; L(N, D)'s compute-optimal
    loss, else L(C)'s), with what most simulated studies do not identify. The studies are
    independent: they run on `pool` (default: a `simulation_pool` of their own)."""
    if pool is None:
        with simulation_pool() as own:
            return expected_precision(design, law, noise, noise_source, named, studies, resamples, seed, own)
    columns = tuple(design[column].to_numpy(float) for column in ("params", "tokens", "flops"))
    draws = np.random.default_rng(seed).standard_normal((studies, len(design)))
    jobs = [(columns, law.loss(columns[0], columns[1]) * np.exp(noise * draw), named,
             FitOptions(resamples=resamples, seed=seed + study)) for study, draw in enumerate(draws)]
    results = list(pool.map(_simulated_study, jobs))
    widths: dict[str, list[float]] = {}
    flagged: dict[str, list[str]] = {}
    for study_widths, study_flags in results:
        for name, width in study_widths.items():
            widths.setdefault(name, []).append(width)
        for name, reason in study_flags.items():
            flagged.setdefault(name, []).append(reason)
    order = ["alpha", "beta", "E", "L(C) alpha", *(f"loss at {name}" for name in named)]
    half_widths = {name: _mean_width(widths.get(name, [])) for name in order}
    unidentified = {name: f"not identified in {len(reasons)} of {studies} simulated studies, e.g. "
                          f"{reasons[0]}" for name, reasons in flagged.items() if len(reasons) > studies / 2}
    if len(np.unique(columns[0])) < 2:
        unidentified["L(N, D)"] = "one model size cannot separate N from D: L(C) only"
    return Precision(half_widths, unidentified, law, noise, noise_source, studies)


def _simulated_study(job: tuple) -> tuple[dict[str, float], dict[str, str]]:
    """One simulated study's fits: each reported half-width, and each unidentified
    parameter's reason."""
    (params, tokens, flops), loss, named, options = job
    per_token = FlopsPerToken.from_trials(params, tokens, flops)
    one_size = len(np.unique(params)) < 2
    widths, flagged, fits = {}, {}, []
    with threadpool_limits(1, user_api="blas"):
        if not one_size:
            with contextlib.suppress(CrammitError):  # a failed fit counts as not identifying anything
                fits.append(("", fit_params_tokens_law(params, tokens, loss, options)))
        frontier = compute_frontier(flops, loss)
        with contextlib.suppress(CrammitError):  # a frontier of too few points: no L(C) this time
            fits.append(("L(C) ", fit_compute_law(flops[frontier], loss[frontier], options)))
        for prefix, fit in fits:
            for name in ("alpha", "beta", "E") if not prefix else ("alpha",):
                interval = fit.interval(name)
                widths[prefix + name] = _width_of(interval.low, interval.high)
                if not fit.identified(name).identified:
                    flagged[prefix + name] = fit.identified(name).reason
            if not prefix:
                for budget_name, budget in named.items():
                    optimal = allocate(fit.samples, [budget], per_token)[2][:, 0]
                    widths[f"loss at {budget_name}"] = _spread(optimal)
            elif one_size:
                for budget_name, budget in named.items():
                    widths[f"loss at {budget_name}"] = _spread(fit.evaluate([budget])[1][:, 0])
    return widths, flagged


def _width_of(low: float, high: float) -> float:
    return float(high - low) / 2 if np.isfinite(low) and np.isfinite(high) else np.inf


def _spread(samples: np.ndarray) -> float:
    samples = samples[np.isfinite(samples)]
    if len(samples) < 2:
        return np.inf
    low, high = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(high - low) / 2


def _mean_width(widths: list[float]) -> float | None:
    """The mean half-width over the simulated studies; None (not fitted) where none gave one,
    inf (unbounded) where any interval was unbounded."""
    return float(np.mean(widths)) if widths else None


def design_precision(design: pd.DataFrame, law: ReferenceLaw, noise: float, noise_source: str,
                     seed: int = 0, pool: Executor | None = None) -> Precision:
    """`expected_precision` of each law group of a planned design (`plan.trial_design`: its
    `law_group` column), at one and eight device-days of its planned throughput, in one
    Precision whose names carry the group where there are several; on `pool` (default: a
    `simulation_pool` for all the groups)."""
    if pool is None:
        with simulation_pool() as own:
            return design_precision(design, law, noise, noise_source, seed, own)
    groups = list(design.groupby("law_group", sort=False))
    parts = [(name, expected_precision(group, law, noise, noise_source, named_budgets(group), seed=seed,
                                       pool=pool))
             for name, group in groups]
    if len(parts) == 1:
        return parts[0][1]
    half_widths = {f"{name}: {key}": value for name, part in parts for key, value in part.half_widths.items()}
    unidentified = {f"{name}: {key}": why for name, part in parts for key, why in part.unidentified.items()}
    return Precision(half_widths, unidentified, law, noise, noise_source, SIMULATED_STUDIES)


