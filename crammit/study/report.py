"""A study's fits and figures from its tables: `fit.json`, `plots/`, and the summary the
CLI prints. Runs without training, so `crammit study fit` and `study plot` can redo it.

The summary prints a parameter the runs do not identify as `not identified (<reason>)`,
with its one-sided bound where it has one, never as a bare number; every prediction
beyond the largest trial says how far it extrapolates and how far the rollout checked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json
from crammit.study import fit as fitting
from crammit.study import plots, results
from crammit.study.laws import FitOptions
from crammit.study.spec import TrialStatus
from crammit.study.table import DEFAULT_SETTING, fit_rows, read_table, study_rows


def fit_source(source: Path, options: FitOptions | None = None, out: Path | None = None) -> tuple[dict, Path]:
    """Fit a study directory's finished trials, or any table with params, tokens and loss;
    write `fit.json` and the figures into `out` (default: the study directory, or
    `TABLE-fit/` beside a table), with the table as `trials.parquet` where `out` is not the
    study directory, so `study plot OUT` and `study fit OUT` work on it. Returns the fit and
    the path of fit.json."""
    options = options or FitOptions()
    if source.is_dir():
        trials = results.read_tables(source)[0]
        table, target = study_rows(trials), out or source
    elif source.is_file():
        table, target = read_table(source), out or source.with_name(f"{source.stem}-fit")
    else:
        raise CrammitError(f"{source} does not exist; pass a study directory or a CSV/Parquet table")
    if target != source and (target / results.STUDY_FILE).is_file():
        raise CrammitError(f"--out {target} is a study directory; give another --out")
    fit_file = target / results.FIT_FILE
    try:
        fitted = fitting.fit_study(table, options)
    except CrammitError:
        fit_file.unlink(missing_ok=True)  # an earlier fit the runs no longer support must not be drawn
        raise
    if not source.is_dir():
        trials = _as_trials(fit_rows(table, options.params_column).rows)
    target.mkdir(parents=True, exist_ok=True)
    if target != source:
        with atomic_path(target / results.TRIALS_FILE) as tmp:
            trials.to_parquet(tmp, index=False)
    fitting.write_fit(fit_file, fitted)
    plot_directory(target)
    return fitted, fit_file


def _as_trials(table: pd.DataFrame) -> pd.DataFrame:
    """Any fit table in the trials table's shape, so the figures can draw it: its loss as
    `eval_loss`; where it does not say, every row a finished trial named by its row, in one
    setting, its size named by its parameter count."""
    trials = table.rename(columns={"loss": "eval_loss"})
    defaults = {"status": TrialStatus.OK.value, "setting": DEFAULT_SETTING,
                "trial": [f"row {i + 1}" for i in range(len(trials))],
                "size": [f"{value} params" for value in trials["params"]] if "params" in trials else None}
    return trials.assign(**{column: value for column, value in defaults.items() if column not in trials})


def plot_directory(study_dir: Path) -> list[Path]:
    """Draw every figure the study's tables and `fit.json` support into `plots/`."""
    trials, curves = results.read_tables(study_dir)
    fit_file = study_dir / results.FIT_FILE
    fitted = read_json(fit_file) if fit_file.is_file() else {}
    return plots.draw_all(trials, curves, fitted, study_dir / results.PLOTS_DIR)


def write_report(study_dir: Path, options: FitOptions, echo: Callable[[str], None] = print) -> None:
    """Fit, draw and summarise a study whose tables are written. Too few finished trials
    for a law is not an error here: the study still has its tables and training curves."""
    try:
        fitted, _ = fit_source(study_dir, options)
        echo(summarize(fitted))
    except CrammitError as error:
        echo(f"no scaling law fitted: {error}")
        plot_directory(study_dir)
    echo(f"figures in {study_dir / results.PLOTS_DIR}")


def summarize(fitted: dict) -> str:
    """The fitted laws in lines a researcher can act on: what is identified, how well each
    law fits, its rollout, its predictions with their extrapolation, the comparisons."""
    level = f"{fitted['options']['confidence']:.0%}"
    lines = [f"N = {fitted['conventions']['params']}; C = {fitted['conventions']['flops']}"]
    if fitted["conventions"].get("allocation"):
        lines.append(f"allocation: {fitted['conventions']['allocation']}")
    if fitted.get("dropped_rows"):
        dropped = fitted["dropped_rows"]
        lines.append(f"dropped {len(dropped)} row{'s' if len(dropped) > 1 else ''}: {', '.join(dropped)}")
    if fitted.get("unfinished_runs"):
        lines.append(f"left out {fitted['unfinished_runs']} unfinished run(s)")
    if fitted.get("seed_scatter"):
        lines.append(_seed_line(fitted["seed_scatter"]))
    for setting, law in fitted["compute"].items():
        if "skipped" in law:
            lines.append(f"L(C), {setting}: not fitted ({law['skipped']})")
            continue
        frontier = sum(point["frontier"] for point in law["points"])
        lines.append(f"L(C) = E + A*C^-alpha, {setting}, on {frontier} compute-frontier trials "
                     f"({level} intervals):")
        lines += _law_lines(law)
        lines += [f"  at {p['name']} ({p['flops']:.3g} FLOPs): "
                  + (f"loss {interval_text(p)}{_extrapolated(p)}{_unidentified(law)}" if p["supported"] else
                     f"loss not predicted ({p['reason']})") for p in law["predictions"]]
    unique = fitted.get("unique_tokens")
    for name, law in fitted["params_tokens"].items():
        if "skipped" in law:
            lines.append(f"L(N, D), {name}: not fitted ({law['skipped']})")
            continue
        lines.append(f"L(N, D) = E + A/N^alpha + B/D^beta, {name}, on {len(law['points'])} trials "
                     f"({level} intervals):")
        lines += _law_lines(law)
        if not law["allocation_identified"]:
            lines.append(f"  compute-optimal allocation: not identified ({law['allocation_problem']})")
        lines.append(f"  {_exponents_text(law['allocation_exponents'])}")
        for p in law["predictions"]:
            if not p["supported"]:
                lines.append(f"  at {p['name']} ({p['flops']:.3g} FLOPs): not predicted ({p['reason']})")
                continue
            lines.append(f"  at {p['name']} ({p['flops']:.3g} FLOPs): " + (
                f"loss {interval_text(p['loss'])} with {interval_text(p['params'])} parameters on "
                f"{interval_text(p['tokens'])} tokens{_epochs(p, unique)}"
                if law["allocation_identified"] else "allocation not identified") + _extrapolated(p)
                + _unidentified(law))
    lines += [_comparison(entry, level) for entry in fitted.get("comparisons", [])]
    return "\n".join(lines)


def _seed_line(scatter: dict) -> str:
    overall, configurations = scatter["overall"], scatter["configurations"]
    sds = [configuration["sd"] for configuration in configurations]
    seeds = sorted({configuration["seeds"] for configuration in configurations})
    return (f"seeds: {len(configurations)} configurations run {'/'.join(map(str, seeds))} times; "
            f"seed-to-seed sd of final loss {overall['sd']:.3g} nats ({overall['relative_sd']:.2%}) "
            f"pooled over {overall['dof']} degrees of freedom, {min(sds):.3g}–{max(sds):.3g} per "
            "configuration")


def _law_lines(law: dict) -> list[str]:
    width = max(len(name) for name in law["parameters"])
    lines = [f"  {name:<{width}}  {parameter_text(name, value)}" for name, value in law["parameters"].items()]
    quality, resamples = law["fit"], law["fit"]["resamples"]
    lines.append(f"  fit: RMSE of log loss {quality['rmse_log']:.2%}, R² of log loss "
                 f"{_number(quality['r2_log'], 3)}; "
                 f"resamples: {resamples['used']} of {resamples['asked']} used, {resamples['degenerate']} "
                 f"degenerate (no more distinct runs than parameters), {resamples['failed']} failed")
    lines.append(f"  {_rollout_text(law['rollout'])}")
    return lines


def parameter_text(name: str, value: dict) -> str:
    """An identified parameter as `estimate [low, high]`; else `not identified (reason)`
    and, where it sits on a bound, its one-sided bound at the two significant digits a
    bound at a boundary supports."""
    if value["identified"]:
        return interval_text(value)
    text = f"not identified ({value['reason']})"
    if value.get("bound") == "lower" and value["high"] is not None:
        text += f"; {name} ≤ {_number(value['high'], 2)}"
    elif value.get("bound") == "upper" and value["low"] is not None:
        text += f"; {name} ≥ {_number(value['low'], 2)}"
    return text


def _exponents_text(exponents: dict) -> str:
    """Approaches 1, 2 and 3 to N_opt ∝ C^a, D_opt ∝ C^b, side by side."""
    names = {"frontier": "frontier (1)", "isoflop": "IsoFLOP (2)", "parametric": "L(N, D) (3)"}
    parts = []
    for key, name in names.items():
        found = exponents[key]
        parts.append(f"{name} not fitted ({found['skipped']})" if "skipped" in found else
                     f"{name} a {parameter_text('a', found['a'])}, b {parameter_text('b', found['b'])}")
    return f"N_opt ∝ C^a, D_opt ∝ C^b: {'; '.join(parts)}; {exponents['agreement']}"


def _rollout_text(rollout: dict) -> str:
    steps = rollout["steps"]
    fitted = sum("runs" in step for step in steps)
    if not rollout["scored"]:
        reasons = "; ".join(f"{step['predicts']}: {step['skipped']}" for step in steps) or "one budget"
        return f"rollout: not checked ({reasons})"
    width = rollout["median_relative_width"]
    return (f"rollout ({fitted} of {len(steps)} refits): {rollout['scored']} held-out runs, "
            f"{rollout['covered']} covered, {rollout['missed']} missed, {rollout['uninformative']} "
            f"uninformative (interval wider than the loss); mean |error| "
            f"{rollout['mean_abs_relative_error']:.1%}"
            + (f", median interval width {width:.0%} of the loss" if width is not None else "")
            + f"; {_checked(rollout['validated_factor'])}")


def _unidentified(law: dict) -> str:
    names = [name for name, value in law["parameters"].items() if not value["identified"]]
    return f"; from a law whose {', '.join(names)} {'is' if len(names) == 1 else 'are'} not identified" \
        if names else ""


def _checked(factor: float) -> str:
    if factor > 1:
        return f"checked to {factor_text(factor)}"
    return "not checked beyond the largest fitted trial"


def _extrapolated(prediction: dict) -> str:
    factor = prediction["extrapolation"]
    if factor <= 1:
        return ""
    checked = _checked(prediction["validated_factor"])
    return f"; extrapolated {factor_text(factor)} beyond the largest trial; {checked}"


def factor_text(factor: float) -> str:
    return f"{factor:,.0f}×" if factor >= 10 else f"{factor:.3g}×"


def _epochs(prediction: dict, unique_tokens: float | None) -> str:
    epochs = prediction.get("epochs")
    if epochs is None or epochs <= 1:
        return ""
    return (f" ({epochs:.3g} epochs of the corpus's {unique_tokens:.3g} unique training tokens: "
            "repeated data is worth less than fresh)")


def _comparison(entry: dict, level: str) -> str:
    """"a lower by x [lo, hi] nats": the difference of the two laws' predicted losses."""
    first, second = entry["settings"]
    if "skipped" in entry:
        return f"at {entry['budget']}: {first} and {second} not compared ({entry['skipped']})"
    difference = entry["difference"]
    estimate, low, high = difference["estimate"], difference["low"], difference["high"]
    if estimate < 0:  # the first is lower: flip the difference to say by how much
        lower, estimate = first, -estimate
        low, high = (None if high is None else -high), (None if low is None else -low)
    else:
        lower = second
    verdict = f"{lower} lower by {interval_text({'estimate': estimate, 'low': low, 'high': high})} nats"
    if low is None or low <= 0:
        verdict += " (the interval includes 0: no clear winner)"
    factor = entry["extrapolation"]
    extrapolated = f"; extrapolated {factor_text(factor)}" if factor > 1 else ""
    return (f"at {entry['budget']} under {entry['law']} ({level} intervals): {first} "
            f"{interval_text(entry['loss'][0])} vs {second} {interval_text(entry['loss'][1])}: "
            f"{verdict}{extrapolated}")


def interval_text(value: dict) -> str:
    return f"{_number(value['estimate'])} [{_number(value['low'])}, {_number(value['high'])}]"


def _number(value: float | None, digits: int = 4) -> str:
    """fit.json writes a side the runs do not bound as null."""
    return "unbounded" if value is None else f"{value:.{digits}g}"
