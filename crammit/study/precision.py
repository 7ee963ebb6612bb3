"""What a planned study will be able to conclude, before it spends anything: its design (the
trials' N, D and FLOPs) simulated from a reference law with run-to-run noise, each simulated
study fitted with the same code as the real fit, and the spread of the fitted values across
simulated studies read as the expected 95 % interval.

The spread of point estimates over many simulated studies is what a calibrated bootstrap of
one study estimates, at a fraction of the cost (one fit a study instead of hundreds), so a
plan can afford it; a parameter that the simulated fits put on a bound as often as the
identification rule forbids (`laws._identify`) is one the design will not identify.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from crammit.errors import CrammitError
from crammit.io import read_json
from crammit.study.allocation import FlopsPerToken, allocate
from crammit.study.laws import (
    EXPONENT_MAX,
    FitOptions,
    compute_frontier,
    fit_compute_law,
    fit_params_tokens_law,
)

DEFAULT_NOISE = 0.015  # run-to-run scatter of final loss, relative, where a study has no seeds yet
SIMULATED_STUDIES = 40
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
        widths = ", ".join(f"{name} {_width(value)}" for name, value in self.half_widths.items())
        lines = [f"expected precision ({self.studies} simulated studies of this design from "
                 f"{self.law.describe()}, {self.noise:.1%} run noise from {self.noise_source}): "
                 f"95 % half-widths {widths}"]
        if self.unidentified:
            lines.append("this design will likely not identify: " + "; ".join(
                f"{name} ({why})" for name, why in self.unidentified.items()))
        return lines


def _width(value: float | None) -> str:
    return "n/a (not fitted)" if value is None else f"±{value:.2g}"


def expected_precision(design: pd.DataFrame, law: ReferenceLaw, noise: float, noise_source: str,
                       named: dict[str, float], studies: int = SIMULATED_STUDIES, seed: int = 0) -> Precision:
    """Simulate `studies` studies of `design` (rows: params, tokens, flops; one per trial,
    seeds included) from `law` with `noise`, fit L(N, D) and L(C) to each, and return the
    expected half-widths of alpha, beta, E, L(C)'s alpha and the compute-optimal loss at
    each `named` budget (FLOPs), with what the design will not identify."""
    params, tokens, flops = (design[column].to_numpy(float) for column in ("params", "tokens", "flops"))
    per_token = FlopsPerToken.from_trials(params, tokens, flops)
    rng = np.random.default_rng(seed)
    point = FitOptions(resamples=1, seed=seed)
    laws, compute, failures = [], [], 0
    with threadpool_limits(1, user_api="blas"):
        for _ in range(studies):
            loss = law.loss(params, tokens) * np.exp(noise * rng.standard_normal(len(params)))
            try:
                laws.append(fit_params_tokens_law(params, tokens, loss, point).estimate)
            except CrammitError:
                failures += 1
            frontier = compute_frontier(flops, loss)
            with contextlib.suppress(CrammitError):  # a frontier of too few points: no L(C) this time
                compute.append(fit_compute_law(flops[frontier], loss[frontier], point).estimate[2])
    if not laws:
        raise CrammitError("the design cannot be fitted by L(N, D) (it needs 6+ trials of 2+ sizes and 2+ "
                           "token counts)")
    laws = np.array(laws)
    half_widths: dict[str, float | None] = {name: _half_width(laws[:, LAW_NAMES.index(name)])
                                            for name in ("alpha", "beta", "E")}
    half_widths["L(C) alpha"] = _half_width(np.array(compute)) if len(compute) >= 2 else None
    for name, budget in named.items():
        half_widths[f"loss at {name}"] = _half_width(allocate(laws, [budget], per_token)[2][:, 0])
    return Precision(half_widths, _unidentified(laws, failures, studies), law, noise, noise_source, studies)


def _half_width(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(high - low) / 2


def _unidentified(laws: np.ndarray, failures: int, studies: int) -> dict[str, str]:
    """Parameters the simulated fits put on a bound more often than the identification rule
    allows, or whose spread is not clear of their bounds by half its width."""
    tail = (1 - CONFIDENCE) / 2
    out = {}
    for name, floor, cap in (("E", 0.0, None), ("alpha", 0.0, EXPONENT_MAX), ("beta", 0.0, EXPONENT_MAX)):
        values = laws[:, LAW_NAMES.index(name)]
        on_bound = np.isclose(values, floor, atol=1e-4)
        if cap is not None:
            on_bound |= np.isclose(values, cap, atol=1e-4)
        low, high = np.quantile(values, [tail, 1 - tail])
        margin = (high - low) / 2
        if on_bound.mean() > tail:
            out[name] = f"on a bound in {on_bound.mean():.0%} of simulated studies"
        elif low - floor < margin or (cap is not None and cap - high < margin):
            out[name] = f"its expected interval [{low:.2g}, {high:.2g}] is not clear of its bounds"
    if failures:
        out["L(N, D)"] = f"not fitted in {failures} of {studies} simulated studies"
    return out
