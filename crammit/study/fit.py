"""The scaling laws of a study table, as fit.json holds them.

- per law — a setting's, or that of settings that share an arch and a recipe (GPUs per trial,
  or which sizes and budgets a setting covers, change neither) — L(C) = E + A·C^-alpha on
  its compute frontier, and L(N, D) = E + A/N^alpha + B/D^beta with the compute-optimal
  allocation under the trials' own FLOPs per token (`allocation.py`);
- every parameter with its bootstrap interval and whether the runs identify it (`laws.py`);
- a rollout check of each law: refitted on the budgets below each budget in turn (and for
  L(N, D) without its largest size), it predicts the runs it did not see, with intervals for
  one run (the law's uncertainty and a symmetric run-to-run scatter);
- predictions at named budgets (one and eight device-days at the measured throughput), each
  with how far it extrapolates beyond the largest trial, how far the rollout checked, and
  the epochs of the study's corpus it implies;
- each pair of laws compared at the named budgets, the difference with its interval.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from crammit.errors import CrammitError
from crammit.io import write_json
from crammit.study.allocation import FlopsPerToken, allocate, compute_optimal
from crammit.study.isoflop import allocation_exponents
from crammit.study.laws import (
    FitOptions,
    Interval,
    LawFit,
    Noise,
    compute_frontier,
    fit_compute_law,
    fit_params_tokens_law,
    percentile_interval,
    usable_resamples_needed,
)
from crammit.study.table import fit_rows

COMPUTE_LAW = "L(C) = E + A * C^-alpha"
PARAMS_TOKENS_LAW = "L(N, D) = E + A / N^alpha + B / D^beta"
NAMED_HOURS = (24.0, 192.0)  # one and eight device-days
CURVE_POINTS = 60
BUDGET_BINS = 5  # budget levels of a table without a budget column: quantiles of log FLOPs
UNINFORMATIVE_WIDTH = 1.0  # an interval wider than this share of the loss says nothing
NO_LAW = "no law"


@dataclasses.dataclass(frozen=True)
class FittedLaw:
    """What predictions beyond a section's JSON need: the law itself, its largest trial and
    the extrapolation its rollout checked (the comparisons; `recommend.py`)."""

    fit: LawFit
    largest: float  # the law's largest trial's FLOPs
    validated: float  # the extrapolation factor its rollout checked
    per_token: FlopsPerToken | None = None  # L(N, D) only
    allocation_identified: bool = False

    def extrapolation(self, flops: float) -> dict[str, Any]:
        """How far `flops` lies beyond the largest trial, and whether the law supports it there."""
        return _extrapolation(flops, self.largest, self.validated, self.fit)


def fit_study(table: pd.DataFrame, options: FitOptions | None = None) -> dict[str, Any]:
    """Every fit of a study table, as the JSON-ready dict that fit.json holds (see the module
    docstring); a part that cannot be fitted says why under "skipped". No law at all is a
    CrammitError."""
    options = options or FitOptions()
    cleaned = fit_rows(table, options.params_column)
    rows = cleaned.rows
    fitted: dict[tuple[str, str], FittedLaw] = {}
    # The optimiser's vectors are a handful of numbers: BLAS threads only contend for the cores.
    with threadpool_limits(1, user_api="blas"):
        compute, params_tokens, groups = {}, {}, dict(_law_groups(rows))
        for name, group in groups.items():
            compute[name], fitted[("L(C)", name)] = _compute_section(group, options)
            params_tokens[name], fitted[("L(N, D)", name)] = _params_tokens_section(group, options)
        comparisons = _comparisons(groups, params_tokens, fitted, options)
    sections = [*compute.values(), *params_tokens.values()]
    if all("skipped" in section for section in sections):
        _no_law(cleaned.rows, compute, params_tokens)
    return {
        "options": dataclasses.asdict(options),
        "conventions": {
            "params": f"{options.params}: the table's {options.params_column} column",
            "flops": cleaned.flops_source,
            "allocation": next((section["allocation_convention"] for section in params_tokens.values()
                                if "allocation_convention" in section), None),
        },
        "table_points": len(rows),
        "dropped_rows": list(cleaned.dropped),
        "unfinished_runs": cleaned.unfinished,
        "unique_tokens": _unique_tokens(rows),
        "seed_scatter": seed_scatter(rows),
        "compute": compute,
        "params_tokens": params_tokens,
        "comparisons": comparisons,
    }


def _no_law(rows: pd.DataFrame, compute: dict, params_tokens: dict) -> None:
    """Why no law could be fitted, as one error: a loss that does not fall leads ("no law: ...")."""
    reasons = {**{f"L(C) of {setting}": section["skipped"] for setting, section in compute.items()},
               **{f"L(N, D) of {name}": section["skipped"] for name, section in params_tokens.items()}}
    lead = next((reason for reason in reasons.values() if reason.startswith(NO_LAW)), None)
    others = [f"{law}: {reason}" for law, reason in reasons.items() if reason != lead]
    if lead:
        raise CrammitError(lead + (f" ({'; '.join(others)})" if others else ""))
    raise CrammitError(f"no scaling law can be fitted to {len(rows)} usable runs ({'; '.join(others)})")


def write_fit(path: Path, fit: dict[str, Any]) -> None:
    """Write a `fit_study` result as JSON, atomically."""
    write_json(path, fit)


@dataclasses.dataclass(frozen=True, eq=False)
class LawGroup:
    """The rows one law is fitted on (a setting's, or those of settings that share an arch
    and a recipe), named as fit.json names the law."""

    name: str
    rows: pd.DataFrame

    @property
    def throughput(self) -> float | None:
        return device_throughput(self.rows)

    @property
    def unique_tokens(self) -> float | None:
        return _unique_tokens(self.rows)

    def params_tokens(self, options: FitOptions) -> tuple[dict[str, Any], FittedLaw | None]:
        """L(N, D) as `fit_study` fits it: fit.json's section, and the law for predictions at
        other budgets (None where the section says why it was skipped)."""
        with threadpool_limits(1, user_api="blas"):
            return _params_tokens_section(self.rows, options)


def law_group(table: pd.DataFrame, setting: str | None, options: FitOptions) -> LawGroup:
    """The law group `setting` belongs to (None: the table's only one)."""
    rows = fit_rows(table, options.params_column).rows
    groups = dict(_law_groups(rows))
    if not groups:
        raise CrammitError("the study has no finished trial to fit a law to")
    if setting is None and len(groups) > 1:
        raise CrammitError(f"the study fits {len(groups)} laws ({'; '.join(groups)}); pick one with "
                           "--setting")
    name = next((name for name, group in groups.items() if setting in (None, *group["setting"])), None)
    if name is None:
        raise CrammitError(f"setting {setting!r} has no finished trial (settings with finished trials: "
                           f"{', '.join(sorted(rows['setting'].unique()))})")
    return LawGroup(name, groups[name])


# --- the rows: law groups, budget levels, named budgets, noise -------------------------------------

def _law_groups(rows: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Rows of settings that share an arch and a recipe (where the table says), named by
    their settings; else each setting alone."""
    for _, group in rows.groupby(_law_keys(rows), sort=True, dropna=False):
        yield _law_name(group["setting"]), group.reset_index(drop=True)


def law_group_names(rows: pd.DataFrame) -> pd.Series:
    """Each row's law group, named as fit.json names its laws (figures that compare sizes
    within a law draw one panel a group)."""
    return rows.groupby(_law_keys(rows), dropna=False)["setting"].transform(_law_name)


def _law_keys(rows: pd.DataFrame) -> list[str]:
    return [column for column in ("arch", "recipe") if column in rows] or ["setting"]


def _law_name(settings: pd.Series) -> str:
    return " + ".join(sorted(settings.unique()))


def _budget_levels(rows: pd.DataFrame) -> pd.Series:
    """Each row's budget level, 0 for the least compute: the `budget` column where the table
    has one (ordered by median FLOPs), else quantile bins of log FLOPs."""
    if "budget" in rows and rows["budget"].notna().all():
        keys = rows[["budget_unit", "budget"]].astype(str).agg(" ".join, axis=1) if "budget_unit" in rows \
            else rows["budget"].astype(str)
    else:
        bins = min(BUDGET_BINS, rows["flops"].nunique())
        keys = pd.qcut(np.log(rows["flops"]), q=bins, labels=False, duplicates="drop").astype(str)
    order = rows.groupby(keys)["flops"].median().sort_values().index
    return keys.map({key: level for level, key in enumerate(order)})


def _budget_name(rows: pd.DataFrame) -> str:
    if "budget" in rows and rows["budget"].notna().all() and rows["budget"].nunique() == 1:
        unit = rows["budget_unit"].iloc[0] if "budget_unit" in rows else ""
        return f"{rows['budget'].iloc[0]:g} {unit}".strip()
    return f"{rows['flops'].min():.3g}–{rows['flops'].max():.3g} FLOPs"


def _device_hours(rows: pd.DataFrame) -> pd.Series:
    """Each row's device-hours (GPU-hours, or CPU-worker-hours); NaN where not recorded."""
    return pd.to_numeric(rows.get("device_hours", pd.Series(np.nan, index=rows.index)), errors="coerce")


def device_throughput(rows: pd.DataFrame) -> float | None:
    """The rows' median measured training FLOP/s of one device; None without device hours."""
    hours = _device_hours(rows)
    measured = hours > 0
    return float(np.median(rows["flops"][measured] / (3600 * hours[measured]))) if measured.any() else None


def named_budgets(rows: pd.DataFrame) -> dict[str, float]:
    """One and eight device-days in FLOPs at the rows' median measured throughput (none
    without device hours)."""
    throughput = device_throughput(rows)
    if throughput is None:
        return {}
    measured = rows[_device_hours(rows) > 0]
    if "device" not in measured:
        names = ("1 device-day", "8 device-days")
    elif (measured["device"] == "cuda").all():
        names = ("1 GPU-day", "8 GPU-days")
    else:
        names = ("1 CPU-worker-day", "8 CPU-worker-days")
    return {name: throughput * 3600 * hours for name, hours in zip(names, NAMED_HOURS, strict=True)}


def _unique_tokens(rows: pd.DataFrame) -> float | None:
    """The study corpus's unique training tokens, where the table records them."""
    values = pd.to_numeric(rows.get("unique_tokens", pd.Series(dtype=float)), errors="coerce").dropna()
    return float(values.median()) if len(values) else None


def _configurations(rows: pd.DataFrame) -> pd.Series:
    """Each row's configuration: its setting, size and budget (or tokens, in a table without
    budgets); the seeds of one configuration share it."""
    key = ["setting", "params", "budget"] if "budget" in rows and rows["budget"].notna().all() else \
        ["setting", "params", "tokens"]
    return rows[key].astype(str).agg("|".join, axis=1)


def seed_scatter(rows: pd.DataFrame) -> dict[str, Any] | None:
    """The seed-to-seed standard deviation of final loss per repeated configuration and
    pooled over them (in nats, and of log loss: relative); None without repeats."""
    configurations = _configurations(rows)
    repeated = rows[configurations.map(configurations.value_counts()) > 1]
    if repeated.empty:
        return None
    groups = repeated.groupby(_configurations(repeated), sort=False)
    dof = int((groups.size() - 1).sum())
    pooled = float(np.sqrt((repeated["loss"] - groups["loss"].transform("mean")).pow(2).sum() / dof))
    log_loss = np.log(repeated["loss"])
    relative = float(np.sqrt((log_loss - log_loss.groupby(_configurations(repeated)).transform("mean"))
                             .pow(2).sum() / dof))
    return {
        "overall": {"sd": pooled, "relative_sd": relative, "dof": dof},
        "configurations": [
            {"setting": str(group["setting"].iloc[0]), "size": _label(group.iloc[0].to_dict(), "size"),
             "params": float(group["params"].iloc[0]), "flops": float(group["flops"].median()),
             "seeds": len(group), "mean": float(group["loss"].mean()), "sd": float(group["loss"].std(ddof=1))}
            for _, group in groups],
    }


def _frontier(rows: pd.DataFrame) -> np.ndarray:
    """Rows of the configurations on the compute frontier, judged by each configuration's
    mean loss, so that the luckiest seed does not make the frontier."""
    configurations = _configurations(rows)
    means = rows.groupby(configurations).agg(flops=("flops", "median"), loss=("loss", "mean"))
    on = dict(zip(means.index, compute_frontier(means["flops"], means["loss"]), strict=True))
    return configurations.map(on).to_numpy(bool)


def _noise(rows: pd.DataFrame, fit: LawFit) -> Noise | None:
    """A run's scatter of log loss about the law: pooled over repeated trials (the seeds of
    one configuration) where the study has them, else the residuals' (inflated for the
    fitted parameters); None when neither leaves a degree of freedom."""
    log_loss = np.log(rows["loss"])
    groups = log_loss.groupby(_configurations(rows))
    dof = int((groups.size() - 1).clip(lower=0).sum())
    if dof >= 1:
        squares = float((log_loss - groups.transform("mean")).pow(2).sum())
        return Noise(float(np.sqrt(squares / dof)), dof, "repeated trials")
    return fit.residual_noise()


def _curve_flops(flops: pd.Series, budgets: dict[str, float], fit: LawFit, validated: float) -> np.ndarray:
    """Where curves are drawn: from half the least compute to twice the most, or to the largest
    named budget the law supports (`_extrapolation`)."""
    supported = [c for c in budgets.values()
                 if _extrapolation(c, float(flops.max()), validated, fit)["supported"]]
    return np.geomspace(flops.min() / 2, max([2 * flops.max(), *supported]), CURVE_POINTS)


def _law_or_reason(fit_law: Callable[[pd.DataFrame, FitOptions], LawFit], rows: pd.DataFrame,
                   options: FitOptions) -> tuple[LawFit | None, str]:
    """The law `fit_law` fits to the rows, or why there is none (the loss's problem, or the
    fit's error)."""
    problem = _loss_problem(rows)
    if problem:
        return None, problem
    try:
        return fit_law(rows, options), ""
    except CrammitError as error:
        return None, str(error)


def _loss_problem(rows: pd.DataFrame) -> str | None:
    """Why the rows hold no law of loss against compute: a constant loss, or one that does
    not fall as compute grows."""
    if rows["loss"].nunique() < 2:
        return f"{NO_LAW}: the loss is {rows['loss'].iloc[0]:.4g} in all {len(rows)} runs"
    if rows["flops"].nunique() > 1:
        rho = spearmanr(rows["flops"], rows["loss"]).statistic
        if not rho < 0:
            return (f"{NO_LAW}: loss does not fall with compute (Spearman rho {rho:+.2f} over "
                    f"{len(rows)} runs)")
    return None


# --- JSON -------------------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _label(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    return None if value is None or pd.isna(value) else str(value)


def _json(interval: Interval) -> dict[str, float | None]:
    return {key: _number(value) for key, value in interval._asdict().items()}


def _json_each(interval: Interval) -> list[dict[str, float | None]]:
    """An interval of arrays as one JSON interval per element."""
    return [_json(Interval(*values)) for values in zip(*interval, strict=True)]


def _parameters(fit: LawFit) -> dict[str, dict[str, Any]]:
    out = {}
    for name in fit.names:
        verdict = fit.identified(name)
        out[name] = {**_json(fit.interval(name)), "identified": verdict.identified,
                     **({"reason": verdict.reason} if not verdict.identified else {}),
                     **({"bound": verdict.bound} if verdict.bound else {})}
    return out


def _quality(fit: LawFit, options: FitOptions) -> dict[str, Any]:
    return {**fit.fit_quality(), "points": len(fit.log_residuals), "gradient_norm": fit.gradient_norm,
            "resamples": {"asked": options.resamples, "used": len(fit.samples),
                          "degenerate": fit.degenerate_resamples, "failed": fit.failed_resamples}}


def _extrapolation(flops: float, largest: float, validated: float, fit: LawFit) -> dict[str, Any]:
    """How far a prediction lies beyond the largest trial and the factor the rollout checked,
    and whether it is supported: a law whose parameters are not all identified is trusted
    only as far as its rollout checked it."""
    factor = float(flops / largest)
    unidentified = [name for name in fit.names if not fit.identified(name).identified]
    supported = not unidentified or factor <= validated
    return {"extrapolation": factor, "validated_factor": validated, "supported": supported,
            **({} if supported else {"reason": f"the law's {', '.join(unidentified)} "
                                               f"{'is' if len(unidentified) == 1 else 'are'} not identified "
                                               f"and {_times(factor)} lies beyond the {_times(validated)} "
                                               "its rollout checked"})}


def _times(factor: float) -> str:
    return f"{factor:,.0f}×" if factor >= 10 else f"{factor:.3g}×"


# --- rollout ----------------------------------------------------------------------------------------

def _score(rows: pd.DataFrame, predicted: Interval, inputs: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each held-out run against its one-run interval: covered, missed, or uninformative (an
    interval wider than the loss itself covers anything)."""
    scored = []
    for row, interval in zip(rows.to_dict("records"), _json_each(predicted), strict=True):
        loss, width = float(row["loss"]), None
        if interval["low"] is not None and interval["high"] is not None:
            width = (interval["high"] - interval["low"]) / loss
        verdict = ("uninformative" if width is None or width > UNINFORMATIVE_WIDTH else
                   "covered" if interval["low"] <= loss <= interval["high"] else "missed")
        scored.append({"trial": _label(row, "trial"), **{column: float(row[column]) for column in inputs},
                       "flops": float(row["flops"]), "loss": loss, **interval,
                       "relative_error": (interval["estimate"] - loss) / loss, "relative_width": width,
                       "verdict": verdict})
    return scored


def _rollout(rows: pd.DataFrame, steps: list[tuple[str, pd.Series, pd.Series]],
             refit: Callable[[pd.DataFrame, FitOptions], LawFit],
             targets: Callable[[pd.DataFrame], pd.DataFrame],
             inputs: tuple[str, ...], options: FitOptions) -> dict[str, Any]:
    """Refit on each step's training rows and predict its held-out `targets`; every
    held-out target is scored. The validated factor is the largest extrapolation (held-out
    FLOPs over the training rows' largest) up to which every step's runs were covered."""
    records = []
    needed = usable_resamples_needed(options.tail)
    for name, train, held in steps:
        record: dict[str, Any] = {"predicts": name}
        try:
            fit = refit(rows[train].reset_index(drop=True), options)
        except CrammitError as error:
            records.append({**record, "skipped": str(error)})
            continue
        if len(fit.samples) < needed:
            records.append({**record, "skipped": f"only {len(fit.samples)} of {options.resamples} resamples "
                                                 f"of {int(train.sum())} runs were usable; an interval needs "
                                                 f"{needed}"})
            continue
        noise = _noise(rows[train].reset_index(drop=True), fit)
        if noise is None:
            records.append({**record, "skipped": f"{int(train.sum())} runs leave no degree of freedom for "
                                                 "the run-to-run scatter"})
            continue
        target = targets(rows[held])
        predicted = fit.predict_run(*(target[column] for column in inputs), noise=noise, seed=options.seed)
        records.append({**record, "fitted_on": int(train.sum()),
                        "factor": float(target["flops"].max() / rows[train]["flops"].max()),
                        "noise": noise._asdict(), "runs": _score(target, predicted, inputs)})
    runs = [run for record in records for run in record.get("runs", [])]
    counts = {verdict: sum(run["verdict"] == verdict for run in runs)
              for verdict in ("covered", "missed", "uninformative")}
    validated = 1.0
    for record in sorted((r for r in records if "runs" in r), key=lambda r: r["factor"]):
        if any(run["verdict"] != "covered" for run in record["runs"]):
            break
        validated = max(validated, record["factor"])
    informative = counts["covered"] + counts["missed"]
    return {
        "steps": records, "scored": len(runs), **counts,
        "coverage": counts["covered"] / informative if informative else None,
        "mean_abs_relative_error": float(np.mean([abs(run["relative_error"]) for run in runs]))
        if runs else None,
        "median_relative_width": float(np.median([run["relative_width"] for run in runs
                                                  if run["relative_width"] is not None]))
        if any(run["relative_width"] is not None for run in runs) else None,
        "validated_factor": validated,
    }


def _budget_steps(rows: pd.DataFrame) -> list[tuple[str, pd.Series, pd.Series]]:
    """Each budget predicted from the budgets below it."""
    levels = _budget_levels(rows)
    return [(_budget_name(rows[levels == level]), levels < level, levels == level)
            for level in range(1, int(levels.max()) + 1)]


# --- L(C) -------------------------------------------------------------------------------------------

def _frontier_fit(rows: pd.DataFrame, options: FitOptions) -> LawFit:
    frontier = rows[_frontier(rows)]
    return fit_compute_law(frontier["flops"], frontier["loss"], options, _configurations(frontier))


def _lowest_of_budget(rows: pd.DataFrame) -> pd.DataFrame:
    """What L(C) predicts at a held-out budget: the lowest loss reached with it, by the
    configuration whose seeds reach the lowest mean (all its seeds are scored)."""
    configurations = _configurations(rows)
    return rows[configurations == rows["loss"].groupby(configurations).mean().idxmin()]


def _compute_section(rows: pd.DataFrame, options: FitOptions) -> tuple[dict[str, Any], FittedLaw | None]:
    """L(C) on one law's compute frontier, with its band, named budgets and rollout."""
    frontier = _frontier(rows)

    def points(predicted: Any) -> list[dict[str, Any]]:
        return [{"trial": _label(row, "trial"), "size": _label(row, "size"), "flops": float(row["flops"]),
                 "loss": float(row["loss"]), "predicted": _number(value), "frontier": bool(on)}
                for row, value, on in zip(rows.to_dict("records"), predicted, frontier, strict=True)]

    fit, skipped = _law_or_reason(_frontier_fit, rows, options)
    if skipped:
        return {"skipped": skipped, "points": points([None] * len(rows))}, None
    budgets = named_budgets(rows)
    rollout = _rollout(rows, _budget_steps(rows), _frontier_fit, _lowest_of_budget, ("flops",), options)
    band = _curve_flops(rows["flops"], budgets, fit, rollout["validated_factor"])
    largest = float(rows["flops"].max())
    named = fit.predict(list(budgets.values()))
    section = {
        "law": COMPUTE_LAW,
        "parameters": _parameters(fit),
        "fit": _quality(fit, options),
        "noise": _noise_json(rows[frontier].reset_index(drop=True), fit),
        "points": points(fit.predict(rows["flops"]).estimate),
        "largest_trial_flops": largest,
        "band": [{"flops": float(c), **interval} for c, interval in zip(band, _json_each(fit.predict(band)),
                                                                        strict=True)],
        "predictions": [{"name": name, "flops": c, **interval,
                         **_extrapolation(c, largest, rollout["validated_factor"], fit)}
                        for (name, c), interval in zip(budgets.items(), _json_each(named), strict=True)],
        "rollout": rollout,
    }
    return section, FittedLaw(fit, largest, rollout["validated_factor"])


def _noise_json(rows: pd.DataFrame, fit: LawFit) -> dict[str, Any] | None:
    noise = _noise(rows, fit)
    return None if noise is None else noise._asdict()


# --- L(N, D) ----------------------------------------------------------------------------------------

def _params_tokens_fit(rows: pd.DataFrame, options: FitOptions) -> LawFit:
    return fit_params_tokens_law(rows["params"], rows["tokens"], rows["loss"], options, _configurations(rows))


def _allocation_problem(fit: LawFit) -> str | None:
    missing = [name for name in ("alpha", "beta") if not fit.identified(name).identified]
    return f"needs {' and '.join(missing)} identified" if missing else None


def _params_tokens_section(rows: pd.DataFrame, options: FitOptions
                           ) -> tuple[dict[str, Any], FittedLaw | None]:
    """L(N, D) over one law group's runs, with its compute-optimal allocation, named budgets
    and rollout (over budgets, and without the largest size)."""
    settings = sorted(rows["setting"].unique())
    sizes = rows["params"].nunique()
    if sizes < 2:
        return {"settings": settings, "skipped": f"one model size ({rows['params'].iloc[0]:.3g} parameters) "
                                                 "cannot separate N from D: L(C) only"}, None
    fit, skipped = _law_or_reason(_params_tokens_fit, rows, options)
    if skipped:
        return {"settings": settings, "skipped": skipped}, None
    per_token = FlopsPerToken.from_trials(rows["params"], rows["tokens"], rows["flops"])
    budgets = named_budgets(rows)
    largest_size = rows["params"] == rows["params"].max()
    steps = [*_budget_steps(rows), (f"the largest size ({rows['params'].max():.3g} parameters)",
                                    ~largest_size, largest_size)]
    rollout = _rollout(rows, steps, _params_tokens_fit, lambda held: held, ("params", "tokens"), options)
    largest = float(rows["flops"].max())
    unique_tokens = _unique_tokens(rows)
    not_allocated = _allocation_problem(fit)

    def allocations(flops: list[float] | np.ndarray) -> list[dict[str, Any]]:
        optimal = {name: _json_each(interval)
                   for name, interval in compute_optimal(fit, flops, per_token).items()}
        return [{"flops": float(c), **{name: values[i] for name, values in optimal.items()}}
                for i, c in enumerate(flops)]

    def prediction(name: str, allocation: dict[str, Any]) -> dict[str, Any]:
        tokens = allocation["tokens"]["estimate"]
        epochs = {"epochs": tokens / unique_tokens} if unique_tokens and tokens else {}
        return {"name": name, **allocation, **epochs,
                **_extrapolation(allocation["flops"], largest, rollout["validated_factor"], fit)}

    predicted = fit.predict(rows["params"], rows["tokens"]).estimate
    optimal_loss = compute_optimal(fit, rows["flops"], per_token)["loss"].estimate
    curve = _curve_flops(rows["flops"], budgets, fit, rollout["validated_factor"])
    exponents = allocation_exponents(rows, _configurations(rows), per_token,
                                     fit if not_allocated is None else None, options)
    if not_allocated:
        exponents["parametric"] = {"skipped": f"the allocation is not identified: it {not_allocated}"}
    section = {
        "law": PARAMS_TOKENS_LAW,
        "settings": settings,
        "parameters": _parameters(fit),
        "fit": _quality(fit, options),
        "noise": _noise_json(rows, fit),
        "allocation_convention": per_token.describe(),
        "allocation_identified": not_allocated is None,
        **({"allocation_problem": not_allocated} if not_allocated else {}),
        "points": [{"trial": _label(row, "trial"), "setting": row["setting"], "size": _label(row, "size"),
                    **{column: float(row[column]) for column in ("params", "tokens", "flops", "loss")},
                    "predicted": float(value), "optimal_loss": float(optimal)}
                   for row, value, optimal
                   in zip(rows.to_dict("records"), predicted, optimal_loss, strict=True)],
        "largest_trial_flops": largest,
        "compute_optimal": allocations(curve),
        "allocation_exponents": exponents,
        "predictions": [prediction(name, allocation) for name, allocation
                        in zip(budgets, allocations(list(budgets.values())), strict=True)],
        "rollout": rollout,
    }
    return section, FittedLaw(fit, largest, rollout["validated_factor"], per_token, not_allocated is None)


# --- comparisons -----------------------------------------------------------------------------------

def _comparisons(groups: dict[str, pd.DataFrame], params_tokens: dict, fitted: dict,
                 options: FitOptions) -> list[dict[str, Any]]:
    """Each pair of laws (settings, or settings that share an arch and recipe) at each named
    budget both have: the predicted losses and their difference with a bootstrap interval
    (the two laws' resamples are independent, so their samples pair in any order). Under
    L(N, D)'s compute-optimal loss where both allocations are identified, else under L(C)."""
    out = []
    for first, second in itertools.combinations(sorted(groups), 2):
        budgets = {name: named_budgets(groups[name]) for name in (first, second)}
        both = all(fitted[("L(N, D)", name)] is not None and fitted[("L(N, D)", name)].allocation_identified
                   for name in (first, second))
        law = "L(N, D)" if both else "L(C)"
        for budget in sorted(budgets[first].keys() & budgets[second].keys()):
            entries = [fitted[(law, name)] for name in (first, second)]
            if any(entry is None for entry in entries):
                continue
            names = (first, second)
            support = [entry.extrapolation(budgets[name][budget])
                       for name, entry in zip(names, entries, strict=True)]
            if not all(part["supported"] for part in support):
                reasons = [f"{name}: {part['reason']}" for name, part in zip(names, support, strict=True)
                           if not part["supported"]]
                out.append({"budget": budget, "law": law, "settings": list(names),
                            "skipped": "; ".join(reasons)})
                continue
            samples = [_named_samples(entry, budgets[name][budget])
                       for name, entry in zip(names, entries, strict=True)]
            (estimate_a, samples_a), (estimate_b, samples_b) = samples
            paired = min(len(samples_a), len(samples_b))
            difference = percentile_interval(estimate_a - estimate_b, samples_a[:paired] - samples_b[:paired],
                                             options.confidence)
            extrapolation = max(budgets[name][budget] / groups[name]["flops"].max()
                                for name in (first, second))
            out.append({"budget": budget, "law": law, "settings": [first, second],
                        "loss": [_json(percentile_interval(estimate_a, samples_a, options.confidence)),
                                 _json(percentile_interval(estimate_b, samples_b, options.confidence))],
                        "difference": _json(difference), "extrapolation": float(extrapolation)})
    return sorted(out, key=lambda entry: (entry["budget"], entry["settings"]))


def _named_samples(entry: FittedLaw, flops: float) -> tuple[float, np.ndarray]:
    """A law's predicted loss at `flops` (L(N, D): its compute-optimal loss): the estimate and
    its bootstrap samples."""
    if entry.per_token is not None:
        estimate, samples = (allocate(params, [flops], entry.per_token)[2][..., 0]
                             for params in (entry.fit.estimate, entry.fit.samples))
        return float(estimate), samples
    estimate, samples = entry.fit.evaluate([flops])
    return float(estimate[0]), samples[:, 0]
