"""Figures of a scaling study: loss against compute with the fitted laws and their bands,
settings side by side, equal-budget curves, GLUE scores beside loss, training curves and
residuals.

Each figure is a function of the study's tables (`trials.parquet`, `curves.parquet`) and
`fit.json` that returns a matplotlib Figure, so a notebook shows it inline; `draw_all`
writes every figure the data supports. Only finished trials (status "ok") are drawn.
Figures are made without pyplot, so no global state or display backend is touched.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter

from crammit.errors import CrammitError
from crammit.io import atomic_path
from crammit.study.fit import law_group_names
from crammit.study.spec import TrialStatus

LOSS_LABEL = "held-out MLM loss (nats/token)"
FLOPS_LABEL = "training FLOPs"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "p"]
LAW_COLORS = ["0.15", "#b2182b", "#2166ac", "#1b7837"]  # one per fitted law in a figure
ISO_FLOP_TOLERANCE = 0.05  # a FLOP budget whose trials all used it to within this is iso-FLOP
DPI = 150


class NothingToDraw(CrammitError):
    """The study has no data for this figure yet (too few trials, a law not fitted)."""


def draw_all(trials: pd.DataFrame, curves: pd.DataFrame, fit: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write each figure the data supports to `out_dir` as PNG and SVG; return the PNG paths.

    A figure without data is skipped and any earlier copy of it removed, so the folder
    never shows a figure of data the study no longer has.
    """
    figures: dict[str, Callable[[], Figure]] = {
        "loss_vs_compute": lambda: loss_vs_compute(trials, fit),
        "compute_frontier": lambda: compute_frontier(trials, fit),
        "allocation_approaches": lambda: allocation_approaches(fit),
        "settings_comparison": lambda: settings_comparison(trials),
        "iso_budget": lambda: iso_budget(trials),
        "training_curves": lambda: training_curves(trials, curves),
        "residuals": lambda: residuals(trials, fit),
        "glue_vs_compute": lambda: glue_vs_compute(trials),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in figures.items():
        try:
            figure = draw()
        except NothingToDraw:
            for suffix in ("png", "svg"):
                (out_dir / f"{name}.{suffix}").unlink(missing_ok=True)
            continue
        for suffix in ("png", "svg"):
            with atomic_path(out_dir / f"{name}.{suffix}") as tmp:
                figure.savefig(tmp, format=suffix, dpi=DPI, bbox_inches="tight")
        written.append(out_dir / f"{name}.png")
    return written


def _styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside seaborn's theme without changing matplotlib's global settings."""

    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return draw(*args, **kwargs)

    return styled


@_styled
def loss_vs_compute(trials: pd.DataFrame, fit: dict[str, Any]) -> Figure:
    """Final held-out loss of each trial against its training FLOPs, with each setting's
    fitted L(C) = E + A·C^-α, its confidence band and its named predictions."""
    finished = _finished(trials)
    laws = _compute_laws(fit)
    if finished.empty and not laws:
        raise NothingToDraw("no finished trials and no fitted L(C)")
    fig = Figure(figsize=(9.5, 5.5), layout="constrained")
    ax = fig.subplots()
    if not finished.empty:
        settings = _setting_order(trials)
        sizes, palette = _sizes(trials, finished["size"])
        sns.scatterplot(data=finished, x="flops", y="eval_loss", hue="size", style="setting",
                        hue_order=sizes, palette=palette,
                        style_order=settings, markers=dict(zip(settings, MARKERS, strict=False)),
                        s=70, zorder=3, ax=ax)
    frontier = pd.DataFrame([point for law in laws.values() for point in law["points"] if point["frontier"]])
    if not frontier.empty:
        ax.scatter(frontier["flops"], frontier["loss"], s=180, facecolors="none", edgecolors="0.25",
                   linewidths=1, zorder=2, label="on the compute frontier (fitted)")
    confidence = _confidence(fit)
    titles = []
    for (setting, law), color in zip(laws.items(), itertools.cycle(LAW_COLORS)):
        band = _numbers(pd.DataFrame(law["band"]))
        ax.fill_between(band["flops"], band["low"], band["high"], color=color, alpha=0.15, lw=0,
                        label=None if titles else f"{confidence} band")  # one entry serves every band
        _checked_line(ax, band["flops"], band["estimate"], _checked_flops(law), color,
                      f"L(C), {setting}: α = {_parameter(law, 'alpha')}")
        for index, prediction in enumerate(p for p in law.get("predictions", []) if p.get("supported", True)):
            _prediction(ax, prediction["flops"], prediction, _prediction_name(prediction), color, index)
        titles.append(f"{_compute_law_text(law)} ({setting})")
    _log_log(ax, loss=True)
    predicted = [prediction[key] for law in laws.values() for prediction in law.get("predictions", [])
                 for key in ("estimate", "low")]
    _loss_limits(ax, [*finished["eval_loss"], *predicted])
    ax.set(xlabel=FLOPS_LABEL, ylabel=LOSS_LABEL)
    ax.set_title("\n".join(titles) or "held-out loss vs training compute (no L(C) fitted)")
    if laws:
        ax.plot([], [], color="0.3", ls="--", label="beyond what the rollout checked")
    _legend_outside(ax)
    return fig


@_styled
def compute_frontier(trials: pd.DataFrame, fit: dict[str, Any]) -> Figure:
    """What each L(N, D) implies at each compute, under the trials' own FLOPs per token:
    (a) the compute-optimal loss, with each trial and the law's value at the trial's N and
    D, which is never below the curve; (b) the compute-optimal parameters and tokens. Both
    with bands; dashed beyond what the rollout checked; an allocation the runs do not
    identify is labelled so."""
    laws = _params_tokens_laws(fit)
    if not laws:
        raise NothingToDraw("no L(N, D) was fitted")
    points = pd.DataFrame([point for law in laws.values() for point in law["points"]])
    points = points.fillna({"size": "unknown"})
    sizes, palette = _sizes(trials, points["size"])
    confidence = _confidence(fit)
    fig = Figure(figsize=(16, 5.5), layout="constrained")
    loss_ax, allocation_ax = fig.subplots(1, 2)
    sns.scatterplot(data=points, x="flops", y="loss", hue="size", hue_order=sizes, palette=palette, s=60,
                    zorder=3, ax=loss_ax)
    loss_ax.scatter(points["flops"], points["predicted"], marker="_", s=160, color="0.2", zorder=4,
                    label="the law at the trial's N, D")
    titles = []
    for (name, law), color in zip(laws.items(), itertools.cycle(LAW_COLORS)):
        optimal = _numbers(pd.json_normalize(law["compute_optimal"]))
        checked = _checked_flops(law)
        flag = "" if law["allocation_identified"] else " (n.i.)"
        _band(loss_ax, optimal, "loss", color, f"{name}: compute-optimal loss{flag}", checked)
        for column, dashes, label in [("params", "-", "N"), ("tokens", ":", "D")]:
            _band(allocation_ax, optimal, column, color, f"{name}: optimal {label}{flag}", checked, dashes)
        mine = points[points["setting"].isin(law["settings"])]
        for column, marker, label in [("params", "o", "N"), ("tokens", "s", "D")]:
            allocation_ax.scatter(mine["flops"], mine[column], color=color, marker=marker, s=36,
                                  edgecolors="white", zorder=3, label=f"{name}: trials' {label}")
        if law["allocation_identified"]:  # a prediction of an allocation the runs cannot tell is not drawn
            for prediction in (p for p in law.get("predictions", []) if p.get("supported", True)):
                _prediction(loss_ax, prediction["flops"], prediction["loss"], _prediction_name(prediction),
                            color)
        else:
            titles.append(f"{name}: the allocation is not identified (n.i.): it {law['allocation_problem']}")
        titles.append(_params_tokens_law_text(name, law))
    _log_log(loss_ax, loss=True)
    loss_ax.set(xlabel=FLOPS_LABEL, ylabel=LOSS_LABEL,
                title=f"(a) loss at the compute-optimal N, D ({confidence} bands; dashed: beyond the "
                      "rollout)")
    _legend_outside(loss_ax)
    _log_log(allocation_ax)
    allocation_ax.set(xlabel=FLOPS_LABEL, ylabel="parameters N, training tokens D",
                      title="(b) compute-optimal allocation, C = c(N)·D")
    _legend_outside(allocation_ax)
    fig.suptitle("\n".join(titles))
    return fig


@_styled
def allocation_approaches(fit: dict[str, Any]) -> Figure:
    """Chinchilla's three approaches to N_opt(C), per L(N, D): (a) the IsoFLOP profiles, each
    budget's parabola of loss in log N and its minimum; (b) N_opt against C by the frontier
    (approach 1), the profiles' minima (2) and the parametric law (3), each labelled with its
    exponent a (n.i.: not identified)."""
    laws = {name: law for name, law in _params_tokens_laws(fit).items() if "allocation_exponents" in law}
    profiles = [(name, profile) for name, law in laws.items()
                for profile in law["allocation_exponents"].get("isoflop_profiles", [])]
    if not profiles:
        raise NothingToDraw("no FLOP budget has an IsoFLOP profile of three sizes or more")
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    profile_ax, optimum_ax = fig.subplots(1, 2)
    budgets = sorted({profile["flops"] for _, profile in profiles})
    palette = dict(zip(budgets, sns.color_palette("flare", len(budgets)), strict=True))
    for name, law in laws.items():
        exponents = law["allocation_exponents"]
        for profile in exponents.get("isoflop_profiles", []):
            color = palette[profile["flops"]]
            sizes = pd.DataFrame(profile["sizes"])
            log_n = np.linspace(np.log(sizes["params"].min()), np.log(sizes["params"].max()), 50)
            profile_ax.plot(np.exp(log_n), np.polyval(profile["parabola"], log_n), color=color, lw=1.2)
            profile_ax.scatter(sizes["params"], sizes["loss"], color=color, s=40, zorder=3,
                               label=f"{_num(profile['flops'])} FLOPs")
            minimum = np.polyval(profile["parabola"], np.log(profile["params"]))
            profile_ax.scatter([profile["params"]], [minimum], marker="*" if profile["bracketed"] else "X",
                               s=160, color=color, edgecolors="black", linewidths=0.6, zorder=4)
        bracketed = [profile for profile in exponents.get("isoflop_profiles", []) if profile["bracketed"]]
        for key, chosen, marker, label in [
                ("frontier", exponents.get("frontier_points", []), "o", "(1) frontier"),
                ("isoflop", bracketed, "*", "(2) IsoFLOP minima")]:
            if "a" in exponents.get(key, {}) and chosen:
                chosen = pd.DataFrame(chosen)
                optimum_ax.scatter(chosen["flops"], chosen["params"], marker=marker, s=90, zorder=3,
                                   label=f"{name}: {label}, a = {_exponent(exponents[key]['a'])}")
        if "a" in exponents.get("parametric", {}):
            curve = pd.json_normalize(law["compute_optimal"])
            optimum_ax.plot(curve["flops"], curve["params.estimate"], color="0.2", lw=1.4,
                            label=f"{name}: (3) L(N, D), a = {_exponent(exponents['parametric']['a'])}")
    profile_ax.scatter([], [], marker="*", s=160, color="white", edgecolors="black",
                       label="minimum (X: outside the sizes tried)")
    profile_ax.set(xlabel="parameters", ylabel=LOSS_LABEL,
                   title="(a) IsoFLOP profiles:\nmean loss against size at each FLOP budget")
    _count_axis(profile_ax)
    _legend_outside(profile_ax, title="budget")
    _log_log(optimum_ax)
    agreement = "; ".join(law["allocation_exponents"]["agreement"] for law in laws.values())
    optimum_ax.set(xlabel=FLOPS_LABEL, ylabel="compute-optimal parameters N_opt",
                   title=f"(b) N_opt ∝ C^a by three approaches:\n{agreement}")
    _legend_outside(optimum_ax)
    return fig


@_styled
def settings_comparison(trials: pd.DataFrame) -> Figure:
    """Settings side by side: final loss against training FLOPs and against device-hours,
    each (setting, size) joined in budget order."""
    finished = _finished(_requiring(trials, "device_hours", "device"))
    if finished["setting"].nunique() < 2:
        raise NothingToDraw("fewer than two settings have finished trials")
    finished = finished.sort_values(["setting", "size", "budget"])
    sizes, _ = _sizes(trials, finished["size"])
    hours = _device_hours_label(finished)
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, label in [(axes[0], "flops", FLOPS_LABEL), (axes[1], "device_hours", hours)]:
        sns.lineplot(data=finished, x=column, y="eval_loss", hue="setting", hue_order=_setting_order(trials),
                     style="size", style_order=sizes, markers=dict(zip(sizes, MARKERS, strict=False)),
                     dashes=False, markersize=8, estimator=None, sort=False, ax=ax,
                     legend=ax is axes[1], palette="colorblind")
        _log_log(ax, loss=True)
        ax.set(xlabel=label, ylabel=LOSS_LABEL)
    axes[0].set_title("loss vs training compute")
    axes[1].set_title(f"loss vs {hours}")
    _legend_outside(axes[1])
    fig.suptitle("settings compared: final loss of each trial, lines join budgets of one size")
    return fig


@_styled
def iso_budget(trials: pd.DataFrame) -> Figure:
    """Loss against model size at equal budget, one line per budget and one panel per law
    (settings that share an arch and a recipe, as the fits group them), for every (law,
    budget) with three or more sizes; the best size is starred."""
    finished = _finished(_requiring(trials, "budget", "budget_unit"))
    finished = finished.assign(setting=law_group_names(finished))
    groups = finished.groupby(["setting", "budget_unit", "budget"]).filter(lambda g: g["size"].nunique() >= 3)
    if groups.empty:
        raise NothingToDraw("no (setting, budget) has finished trials of three or more sizes")
    # Repeated (size, budget) trials (seeds) average to one point, so the line and the star agree.
    means = (groups.groupby(["setting", "budget_unit", "budget", "size"], as_index=False)
             .agg(params=("params", "median"), eval_loss=("eval_loss", "mean")))
    means["label"], order = _budget_labels(means)
    panels = list(means.groupby(["setting", "budget_unit"], sort=False))
    fig = Figure(figsize=(5.5 * len(panels) + 2, 5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((setting, unit), panel) in zip(axes, panels, strict=True):
        budgets = [label for label in order if label in set(panel["label"])]
        palette = dict(zip(budgets, sns.color_palette("flare", len(budgets)), strict=True))
        sns.lineplot(data=panel.sort_values("params"), x="params", y="eval_loss", hue="label",
                     hue_order=budgets, palette=palette, marker="o", markersize=7, estimator=None,
                     sort=False, ax=ax)
        seeds = groups[(groups["setting"] == setting) & (groups["budget_unit"] == unit)]
        if seeds.duplicated(["budget", "size"]).any():  # repeated trials: each seed beside the mean
            ax.scatter(seeds["params"], seeds["eval_loss"], s=16, alpha=0.6, zorder=2, label="each seed",
                       color=(_budget_labels(seeds)[0]).map(palette).tolist())
        best = panel.loc[panel.groupby("label")["eval_loss"].idxmin()]
        ax.scatter(best["params"], best["eval_loss"], marker="*", s=260,
                   color=best["label"].map(palette).tolist(), edgecolors="black", linewidths=0.8, zorder=4)
        ax.scatter([], [], marker="*", s=260, color="white", edgecolors="black",
                   label="best size of the budget")  # a legend entry in no budget's colour
        _size_names(ax, panel)
        _count_axis(ax)
        ax.set(xlabel="parameters", ylabel=LOSS_LABEL)
        ax.set_title(f"{setting}: {_equal_budget_kind(groups, setting, unit)}", pad=30)  # room for size names
        _legend_outside(ax, title="budget")
    return fig


def _equal_budget_kind(trials: pd.DataFrame, setting: str, unit: str) -> str:
    """iso-FLOP where every trial of a FLOP budget used it to within ISO_FLOP_TOLERANCE; else
    say which sizes used more (a budget ends at a whole micro-batch, which is large for
    large sizes)."""
    if unit != "flops":
        return f"equal budget ({unit})"
    rows = trials[(trials["setting"] == setting) & (trials["budget_unit"] == unit)]
    over = rows["flops"] / rows["budget"] - 1
    if (over.abs() <= ISO_FLOP_TOLERANCE).all():
        return "iso-FLOP"
    worst = over.groupby(rows["size"]).max()
    worst = worst[worst.abs() > ISO_FLOP_TOLERANCE].sort_values(ascending=False)
    return ("equal nominal FLOP budgets; actual FLOPs over by "
            + ", ".join(f"{value:+.0%} ({size})" for size, value in worst.items()))


@_styled
def glue_vs_compute(trials: pd.DataFrame) -> Figure:
    """Downstream beside upstream: each trial's GLUE dev average (the study's tasks) and
    its held-out loss against training FLOPs, lines joining the budgets of one size."""
    finished = _finished(trials)
    if "glue_average" not in finished or finished["glue_average"].isna().all():
        raise NothingToDraw("no trial has GLUE results for every task of the study")
    finished = finished.sort_values(["setting", "size", "flops"])
    sizes, palette = _sizes(trials, finished["size"])
    settings = _setting_order(trials)
    tasks = sorted({column.split("_")[1] for column in finished.columns
                    if column.startswith("glue_") and column != "glue_average"})
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, column, label in [(axes[0], "eval_loss", LOSS_LABEL),
                              (axes[1], "glue_average", f"GLUE dev average ({', '.join(tasks)})")]:
        sns.lineplot(data=finished.dropna(subset=[column]), x="flops", y=column, hue="size", hue_order=sizes,
                     palette=palette, style="setting", style_order=settings,
                     markers=dict(zip(settings, MARKERS, strict=False)), dashes=False, markersize=8,
                     estimator=None, sort=False, ax=ax, legend=ax is axes[1])
        if column == "eval_loss":
            _log_log(ax, loss=True)
        else:
            ax.set_xscale("log")  # scores are percentages: a linear axis
        ax.set(xlabel=FLOPS_LABEL, ylabel=label)
    axes[0].set_title("upstream: held-out loss vs training compute")
    axes[1].set_title("downstream: GLUE dev score (median over seeds) vs training compute")
    _legend_outside(axes[1])
    return fig


@_styled
def training_curves(trials: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Training loss against tokens for each finished trial, one panel per setting; a
    ringed dot at each curve's end marks the trial's final held-out loss."""
    finished = _finished(trials)
    steps = _requiring(curves, "trial")
    steps = steps[steps["trial"].isin(finished["trial"])]
    if steps.empty:
        raise NothingToDraw("no training curves of finished trials")
    labels, order = _budget_labels(steps)
    steps = steps.assign(budget=labels)
    settings = [setting for setting in _setting_order(trials) if setting in set(steps["setting"])]
    columns = min(len(settings), 3)
    rows = math.ceil(len(settings) / columns)
    fig = Figure(figsize=(5.8 * columns + 2, 4.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax, setting in zip(axes, settings, strict=False):
        panel = steps[steps["setting"] == setting].sort_values(["trial", "step"])
        budgets = [label for label in order if label in set(panel["budget"])]
        sizes, palette = _sizes(trials, panel["size"])
        sns.lineplot(data=panel, x="tokens", y="loss", hue="size", hue_order=sizes, palette=palette,
                     style="budget", style_order=budgets, units="trial",
                     estimator=None, sort=False, lw=1.2, ax=ax)
        ends = panel.groupby("trial").tail(1).merge(finished[["trial", "eval_loss"]], on="trial")
        ax.scatter(ends["tokens"], ends["eval_loss"], color=ends["size"].map(palette).tolist(), s=55,
                   edgecolors="black", linewidths=1, zorder=4, label="final held-out loss")
        ax.set_xscale("log")
        ax.set(xlabel="training tokens", ylabel="MLM loss (nats/token)", title=setting)
        _legend_outside(ax)
    for ax in axes[len(settings):]:
        ax.set_visible(False)
    fig.suptitle("training loss per step (lines) and final held-out loss (dots)")
    return fig


@_styled
def residuals(trials: pd.DataFrame, fit: dict[str, Any]) -> Figure:
    """Log-space residuals, log observed − log predicted loss, of each fitted law against
    training FLOPs: filled markers by the law fitted on all runs, open markers by the
    rollout's refits on smaller budgets (or sizes) at runs they were not fitted on."""
    rows = []
    fitted = {f"L(C), {setting}": (law, [p for p in law["points"] if p["frontier"]])
              for setting, law in _compute_laws(fit).items()}
    fitted |= {f"L(N, D), {name}": (law, law["points"]) for name, law in _params_tokens_laws(fit).items()}
    for name, (law, points) in fitted.items():
        rows += [{"law": name, "flops": p["flops"], "residual": math.log(p["loss"] / p["predicted"]),
                  "held_out": False} for p in points]
        rows += [{"law": name, "flops": run["flops"], "residual": math.log(run["loss"] / run["estimate"]),
                  "held_out": True}
                 for step in law.get("rollout", {}).get("steps", []) for run in step.get("runs", [])]
    if not rows:
        raise NothingToDraw("no law was fitted")
    frame = pd.DataFrame(rows).dropna()
    palette = dict(zip(fitted, sns.color_palette("colorblind", len(fitted)), strict=True))
    markers = dict(zip(fitted, MARKERS, strict=False))
    fig = Figure(figsize=(9.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="0.3", lw=1)
    for name in fitted:
        for held_out, part in frame[frame["law"] == name].groupby("held_out"):
            ax.scatter(part["flops"], part["residual"], marker=markers[name], s=55, linewidths=1.2,
                       facecolors="none" if held_out else palette[name], edgecolors=palette[name],
                       label=f"{name}, held out by a rollout refit" if held_out else f"{name}, fitted",
                       zorder=3)
    ax.set_xscale("log")
    ax.set(xlabel=FLOPS_LABEL, ylabel="log observed − log predicted loss",
           title="residuals: filled, of the law fitted on every run; open, of a rollout refit\n"
                 "(fitted on the smaller budgets or sizes) at a run it did not see")
    _legend_outside(ax)
    return fig


def _requiring(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The table, if it has `columns` (a table fitted outside a study may not)."""
    missing = [column for column in columns if column not in table]
    if missing:
        raise NothingToDraw(f"the table has no {', '.join(missing)} column")
    return table


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished with a held-out loss; failed and pending ones are not drawn."""
    return trials[trials["status"].eq(TrialStatus.OK.value) & trials["eval_loss"].notna()]


def _sizes(trials: pd.DataFrame, shown: pd.Series) -> tuple[list[str], dict[str, Any]]:
    """The `shown` sizes smallest first by parameter count, and a palette that gives each
    size of the study the same colour in every figure, light to dark as sizes grow."""
    order = trials.groupby("size")["params"].median().sort_values().index.tolist()
    order += sorted(set(shown) - set(order))
    palette = dict(zip(order, sns.color_palette("viridis_r", len(order)), strict=True))
    return [size for size in order if size in set(shown)], palette


def _setting_order(trials: pd.DataFrame) -> list[str]:
    """Settings cheapest first by their trials' median FLOPs (crammed before larger ones)."""
    return trials.groupby("setting")["flops"].median().sort_values().index.tolist()


def _compute_laws(fit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings whose L(C) was fitted, skipping those with too few points."""
    return {setting: law for setting, law in (fit.get("compute") or {}).items() if "skipped" not in law}


def _params_tokens_laws(fit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The law groups whose L(N, D) was fitted."""
    return {name: law for name, law in (fit.get("params_tokens") or {}).items() if "skipped" not in law}


def _confidence(fit: dict[str, Any]) -> str:
    return f"{fit.get('options', {}).get('confidence', 0.95):.0%}"


def _device_hours_label(trials: pd.DataFrame) -> str:
    """GPU-hours and CPU-worker-hours are not the same resource; say which one is on the axis."""
    devices = set(trials["device"])
    return {frozenset({"cuda"}): "GPU-hours", frozenset({"cpu"}): "CPU-worker-hours"}.get(
        frozenset(devices), "device-hours")


def _budget_labels(frame: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Each row's budget as text ("2e7 tokens"), and the labels in order: by unit, then amount."""
    labels = frame["budget"].map(_num) + " " + frame["budget_unit"]
    return labels, labels[frame.sort_values(["budget_unit", "budget"]).index].unique().tolist()


def _num(value: float | None) -> str:
    """Three significant digits, exponents written 3.1e3 rather than 3.1e+03; fit.json's
    null (a value that overflowed in a degenerate fit) as n/a."""
    if value is None:
        return "n/a"
    text = f"{value:.3g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def _count(value: float) -> str:
    """A count with its SI-style suffix: 2.1M, 110M, 1.1B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _interval(interval: dict[str, float]) -> str:
    return f"{_num(interval['estimate'])} [{_num(interval['low'])}, {_num(interval['high'])}]"


def _exponent(value: dict[str, Any]) -> str:
    return _interval(value) if value.get("identified", True) else "n.i."


def _parameter(law: dict[str, Any], name: str) -> str:
    """A parameter as the figures show it: estimate [low, high], or "n.i." (not identified)."""
    value = law["parameters"][name]
    return _interval(value) if value.get("identified", True) else "n.i."


def _compute_law_text(law: dict[str, Any]) -> str:
    p = {name: _num(value["estimate"]) if value.get("identified", True) else "n.i."
         for name, value in law["parameters"].items()}
    text = f"L(C) = {p['E']} + {p['A']}·$C^{{-{p['alpha']}}}$"
    return text + (" (n.i.: not identified by the runs)" if "n.i." in p.values() else "")


def _params_tokens_law_text(name: str, law: dict[str, Any]) -> str:
    p = {key: _num(value["estimate"]) if value.get("identified", True) else "n.i."
         for key, value in law["parameters"].items()}
    return (f"{name}: L(N, D) = {p['E']} + {p['A']} / $N^{{{p['alpha']}}}$ + {p['B']} / $D^{{{p['beta']}}}$, "
            f"fitted on {len(law['points'])} trials"
            + (" (n.i.: not identified)" if "n.i." in p.values() else ""))


def _checked_flops(law: dict[str, Any]) -> float:
    """Up to where a law's curve is drawn solid: its largest trial times the factor its rollout checked."""
    return law["largest_trial_flops"] * law["rollout"]["validated_factor"]


def _checked_line(ax: Axes, flops: pd.Series, values: pd.Series, checked: float, color: Any, label: str,
                  dashes: str = "-") -> None:
    """A law's curve: solid up to `checked` FLOPs, dashed beyond."""
    inside = flops <= checked
    ax.plot(flops[inside], values[inside], color=color, ls=dashes, lw=1.5, label=label)
    beyond = flops >= flops[inside].max() if inside.any() else flops == flops
    ax.plot(flops[beyond], values[beyond], color=color, ls="--", lw=1.2, alpha=0.8)


def _prediction_name(prediction: dict[str, Any]) -> str:
    factor = prediction.get("extrapolation", 1.0)
    return prediction["name"] + (f" (×{factor:,.0f} beyond the trials)" if factor > 1 else "")


def _band(ax: Axes, frame: pd.DataFrame, column: str, color: Any, label: str, checked: float,
          dashes: str = "-") -> None:
    """An interval column of a json-normalised table as a line with its shaded band, solid up
    to `checked` FLOPs and dashed beyond."""
    ax.fill_between(frame["flops"], frame[f"{column}.low"], frame[f"{column}.high"], color=color,
                    alpha=0.15, lw=0)
    _checked_line(ax, frame["flops"], frame[f"{column}.estimate"], checked, color, label, dashes)


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """fit.json's intervals as floats: a side the runs do not bound (null) is NaN, not drawn."""
    return frame.apply(pd.to_numeric, errors="coerce")


def _prediction(ax: Axes, flops: float, interval: dict[str, float], name: str, color: Any,
                index: int = 0) -> None:
    """A named extrapolation as a diamond with its interval as a bar from low to high (a
    percentile interval need not contain the estimate; a side the runs do not bound, null in
    fit.json, is not drawn)."""
    estimate = interval["estimate"]
    low, high = (estimate if bound is None else bound for bound in (interval["low"], interval["high"]))
    ax.plot([flops, flops], [low, high], color=color, lw=1.5, zorder=4)
    ax.scatter([flops, flops], [low, high], marker="_", s=60, color=color, zorder=4)
    ax.scatter([flops], [estimate], marker="D", s=36, color=color, zorder=5)
    # Above the error bar: neighbouring budgets (one and eight days) sit too close for side labels.
    ax.annotate(name, (flops, interval["estimate"]), xytext=(8, 10 + 11 * index), textcoords="offset points",
                ha="left", va="bottom", fontsize="x-small")


def _loss_limits(ax: Axes, losses: list[float]) -> None:
    """Scale the loss axis to the trials and predictions: a band that is wide where the law is
    unsure (far from its points) would otherwise squash them."""
    finite = [loss for loss in losses if loss is not None and math.isfinite(loss) and loss > 0]
    if finite:
        ax.set_ylim(min(finite) / 1.25, max(finite) * 1.25)


def _log_log(ax: Axes, loss: bool = False) -> None:
    """Log axes; a loss axis spans less than a decade, so its ticks read 2, 3, 4 rather than 2×10⁰."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    if loss:
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
        ax.grid(True, which="minor", axis="y", lw=0.6, alpha=0.6)


def _size_names(ax: Axes, panel: pd.DataFrame) -> None:
    """Name each size above the axes at its parameter count."""
    for size, params in panel.groupby("size")["params"].median().items():
        ax.annotate(size, (params, 1), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", rotation=30, fontsize="small")


def _count_axis(ax: Axes) -> None:
    """A log x axis of counts that reads 2M, 5M, 10M, 1.1B rather than 2×10⁶; ticks at 1, 2
    and 5 of each decade over two decades or less, else at each decade, so labels do not meet."""
    ax.set_xscale("log")
    low, high = ax.dataLim.intervalx
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high <= 100 * low else (1,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _count(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend_outside(ax: Axes, title: str | None = None) -> None:
    """Every labelled artist of `ax` in one legend right of the axes, clear of the data;
    the title of seaborn's legend, when it made one, is kept."""
    handles, labels = ax.get_legend_handles_labels()
    if title is None and ax.get_legend() is not None:
        title = ax.get_legend().get_title().get_text() or None
    ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False,
              fontsize="small", title_fontsize="small", alignment="left")
