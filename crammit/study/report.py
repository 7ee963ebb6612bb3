"""A study's fits and figures from its tables: `fit.json`, `plots/`, and the summary the
CLI prints. Runs without training, so `crammit study fit` and `study plot` can redo it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from crammit.errors import CrammitError
from crammit.io import read_json
from crammit.study import fit as fitting
from crammit.study import plots, results


def fit_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows a law is fitted on: finished trials, their final held-out loss as `loss`."""
    return trials[trials["status"] == results.TrialStatus.OK.value].rename(columns={"eval_loss": "loss"})


def fit_source(source: Path, options: fitting.FitOptions | None = None, out: Path | None = None
               ) -> tuple[dict, Path]:
    """Fit a study directory's finished trials, or any table with params, tokens and loss,
    and write `fit.json` into `out` (default: the study directory, or beside the table)."""
    if source.is_dir():
        table = fit_table(results.read_tables(source)[0])
    elif source.is_file():
        table = fitting.load_table(source)
    else:
        raise CrammitError(f"{source} does not exist; pass a study directory or a CSV/Parquet table")
    target = (out or (source if source.is_dir() else source.parent)) / results.FIT_FILE
    try:
        fitted = fitting.fit_study(table, options or fitting.FitOptions())
    except CrammitError:
        target.unlink(missing_ok=True)  # an earlier fit the runs no longer support must not be drawn
        raise
    fitting.write_fit(target, fitted)
    return fitted, target


def plot_directory(study_dir: Path) -> list[Path]:
    """Draw every figure the study's tables and `fit.json` support into `plots/`."""
    trials, curves = results.read_tables(study_dir)
    fit_file = study_dir / results.FIT_FILE
    fitted = read_json(fit_file) if fit_file.is_file() else {}
    return plots.draw_all(trials, curves, fitted, study_dir / results.PLOTS_DIR)


def write_report(study_dir: Path, options: fitting.FitOptions, echo: Callable[[str], None] = print) -> None:
    """Fit, draw and summarise a study whose tables are written. Too few finished trials
    for a law is not an error here: the study still has its tables and training curves."""
    try:
        fitted, _ = fit_source(study_dir, options)
        echo(summarize(fitted))
    except CrammitError as error:
        echo(f"no scaling law fitted: {error}")
    figures = plot_directory(study_dir)
    echo(f"{len(figures)} figures in {study_dir / results.PLOTS_DIR}")


def summarize(fitted: dict) -> str:
    """The fitted laws in a few lines: parameters with their intervals, the held-back
    check and the extrapolated budgets."""
    level = f"{fitted['options']['confidence']:.0%}"
    lines = []
    for setting, law in fitted["compute"].items():
        if "skipped" in law:
            lines.append(f"L(C), {setting}: not fitted ({law['skipped']})")
            continue
        lines.append(f"L(C) = E + A*C^-alpha, {setting} ({level} intervals): {_parameters(law)}")
        lines += _holdout_and_predictions(law, lambda p: _interval(p))
    law = fitted["params_tokens"]
    if "skipped" in law:
        lines.append(f"L(N, D): not fitted ({law['skipped']})")
    else:
        lines.append(f"L(N, D) = E + A/N^alpha + B/D^beta ({level} intervals): {_parameters(law)}")
        lines += _holdout_and_predictions(
            law, lambda p: f"{_interval(p['loss'])} with {_number(p['params']['estimate'])} parameters "
                           f"on {_number(p['tokens']['estimate'])} tokens")
    return "\n".join(lines)


def _parameters(law: dict) -> str:
    return ", ".join(f"{name} {_interval(value)}" for name, value in law["parameters"].items())


def _holdout_and_predictions(law: dict, describe: Callable[[dict], str]) -> list[str]:
    holdout = law["holdout"]
    if "skipped" in holdout:
        lines = [f"  held-back largest budget: not checked ({holdout['skipped']})"]
    else:
        held = holdout["held_out"]
        covered = sum(point["covered"] for point in held)
        lines = [f"  held-back largest budget: predicted with mean |error| "
                 f"{holdout['mean_abs_relative_error']:.1%}, {covered}/{len(held)} inside the interval"]
    lines += [f"  at {p['name']} ({p['flops']:.3g} FLOPs): loss {describe(p)}" for p in law["predictions"]]
    return lines


def _interval(value: dict) -> str:
    return f"{_number(value['estimate'])} [{_number(value['low'])}, {_number(value['high'])}]"


def _number(value: float | None) -> str:
    """fit.json writes a value that overflowed (a degenerate fit) as null."""
    return "n/a" if value is None else f"{value:.4g}"
