"""The study figures: every figure is written when its data is there, skipped cleanly when
not, and its axes say what they measure and in which units."""

from __future__ import annotations

import math

import matplotlib.image
import pandas as pd
import pytest

from crammit.study import plots
from crammit.study.fit import fit_study
from crammit.study.laws import FitOptions
from crammit.study.spec import TrialStatus
from crammit.study.table import study_rows

FIGURES = {"loss_vs_compute", "compute_frontier", "settings_comparison", "iso_budget", "training_curves",
           "residuals", "glue_vs_compute"}
PARAMS = {"tiny": 2.1e6, "mini": 1.1e7, "small": 2.9e7, "medium": 4.2e7, "large": 3.4e8}
E, A, ALPHA = 1.9, 3.0e2, 0.34  # the synthetic L(N, D): E + A/N^alpha + B/D^beta
B, BETA = 2.0e2, 0.28


def _loss(params: float, tokens: float) -> float:
    return E + A / params**ALPHA + B / tokens**BETA


def _trial(setting: str, size: str, budget: float, unit: str, tokens: float,
           status: TrialStatus = TrialStatus.OK) -> dict:
    params, device = PARAMS[size], "cuda" if setting == "large-1gpu" else "cpu"
    flops = 6 * params * tokens
    jitter = 1 + 0.02 * math.sin(params * tokens)  # deterministic scatter around the law
    ok = status is TrialStatus.OK
    loss = _loss(params, tokens)
    glue = {"glue_rte_accuracy": 120 - 12 * loss, "glue_mrpc_f1": 130 - 12 * loss}  # better with lower loss
    return {
        **{column: value if ok else None for column, value in glue.items()},
        "glue_average": sum(glue.values()) / 2 if ok else None,
        "trial": f"{setting}-{size}-{budget:g}{unit}", "setting": setting, "size": size,
        "arch": "bert" if setting == "large-1gpu" else "crammed",  # a law of its own
        "recipe": "bert-o4",
        "gpus": int(device == "cuda"), "workers": 1 if device == "cuda" else 2, "device": device,
        "budget": budget, "budget_unit": unit, "params": int(params),
        "non_embedding_params": int(params * 0.6), "tokens": int(tokens), "flops": flops,
        "elapsed_s": flops / 2e13, "gpu_hours": 0.0, "device_hours": flops / 2e13 / 3600,
        "eval_loss": _loss(params, tokens) * jitter if ok else None, "initial_eval_loss": 10.4,
        "status": status.value, "error": None if ok else "diverged",
    }


def study_tables() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A small study in fit.json's layout: 3 sizes x 3 token budgets in `crammed`, 2 hour
    budgets of `large-1gpu` (too few for its own L(C)) and one failed trial."""
    rows = [_trial("crammed", size, budget, "tokens", budget)
            for size in ("tiny", "mini", "small") for budget in (2e7, 6e7, 2e8)]
    rows += [_trial("large-1gpu", "large", hours, "hours", hours * 3e8) for hours in (1.0, 4.0)]
    rows.append(_trial("crammed", "medium", 2e8, "tokens", 2e8, status=TrialStatus.FAILED))
    trials = pd.DataFrame(rows)
    trials.loc[trials["device"] == "cuda", "gpu_hours"] = trials["device_hours"]

    curves = pd.DataFrame([
        {"trial": t.trial, "setting": t.setting, "size": t.size, "budget": t.budget,
         "budget_unit": t.budget_unit, "step": step, "tokens": t.tokens * step / 20,
         "flops": t.flops * step / 20, "elapsed_s": t.elapsed_s * step / 20,
         "loss": _loss(t.params, t.tokens * step / 20) * 1.03, "lr": 1e-3, "batch_size": 256,
         "tokens_per_s": 1e5, "mfu": None}
        for t in trials[trials["status"] == TrialStatus.OK.value].itertuples() for step in range(1, 21)])

    fit = fit_study(study_rows(trials), FitOptions(resamples=60))
    return trials, curves, fit


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return study_tables()


def test_draw_all_writes_every_figure_as_png_and_svg(study, tmp_path):
    trials, curves, fit = study
    paths = plots.draw_all(trials, curves, fit, tmp_path / "figures")
    assert {path.stem for path in paths} == FIGURES
    for path in paths:
        assert path.suffix == ".png"
        height, width = matplotlib.image.imread(path).shape[:2]
        assert 400 < height < 3000 and 600 < width < 4000
        svg = path.with_suffix(".svg")
        assert svg.stat().st_size > 10_000 and svg.read_text().lstrip().startswith("<?xml")
    assert not [p for p in (tmp_path / "figures").iterdir() if p.name.startswith(".")]  # no temp files left


def test_figures_are_skipped_when_their_data_is_absent(study, tmp_path):
    trials, curves, fit = study
    out = tmp_path / "figures"
    out.mkdir()
    for name in FIGURES:  # figures of an earlier draw, which the data no longer supports
        (out / f"{name}.png").write_bytes(b"stale")
        (out / f"{name}.svg").write_bytes(b"stale")
    bare_fit = {**fit, "params_tokens": {"crammed": {"skipped": "5 points; L(N, D) needs at least 6"}},
                "compute": {setting: {"skipped": "too few", "points": law["points"]}
                            for setting, law in fit["compute"].items()}}
    two_sizes = trials[trials["size"] != "small"].assign(glue_average=None)  # no budget keeps three sizes
    paths = plots.draw_all(two_sizes, curves.iloc[:0], bare_fit, out)
    assert {path.stem for path in paths} == {"loss_vs_compute", "settings_comparison"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{path.stem}.{suffix}" for path in paths
                                                           for suffix in ("png", "svg"))
    for figure, args in [(plots.compute_frontier, (trials, bare_fit)), (plots.residuals, (trials, bare_fit)),
                         (plots.iso_budget, (two_sizes,)), (plots.training_curves, (trials, curves.iloc[:0])),
                         (plots.settings_comparison, (trials[trials["setting"] == "crammed"],)),
                         (plots.glue_vs_compute, (trials.drop(columns="glue_average"),))]:
        with pytest.raises(plots.NothingToDraw):
            figure(*args)


def test_skipped_settings_get_no_law_line_but_keep_their_trials(study):
    trials, _, fit = study
    (ax,) = plots.loss_vs_compute(trials, fit).axes
    laws = [label for label in ax.get_legend_handles_labels()[1] if label.startswith("L(C)")]
    assert len(laws) == 1 and laws[0].startswith("L(C), crammed: α = ")  # large-1gpu has too few points
    figure = plots.loss_vs_compute(trials, {**fit, "compute": {}})
    (ax,) = figure.axes
    drawn = (trials["status"] == TrialStatus.OK).sum()  # the failed trial is left out
    assert len(ax.collections[0].get_offsets()) == drawn
    assert "no L(C) fitted" in ax.get_title()


def test_glue_beside_loss_names_the_tasks_it_averages(study):
    trials, _, _ = study
    loss_ax, glue_ax = plots.glue_vs_compute(trials).axes[:2]
    assert loss_ax.get_ylabel() == plots.LOSS_LABEL and glue_ax.get_ylabel() == "GLUE dev average (mrpc, rte)"
    assert glue_ax.get_xscale() == "log" and glue_ax.get_yscale() == "linear"
    drawn = sum(len(line.get_xdata()) for line in glue_ax.get_lines() if len(line.get_xdata()))
    assert drawn == trials["glue_average"].notna().sum()


def test_axes_say_what_they_measure_in_which_units(study):
    trials, curves, fit = study
    (ax,) = plots.loss_vs_compute(trials, fit).axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("training FLOPs", "held-out MLM loss (nats/token)")
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_title().startswith("L(C) = ") and ax.get_title().endswith("(crammed)")
    loss_ax, allocation_ax = plots.compute_frontier(trials, fit).axes[:2]
    assert allocation_ax.get_ylabel() == "parameters N, training tokens D"
    assert "crammed: L(N, D) = " in loss_ax.figure.get_suptitle()
    iso = plots.iso_budget(trials).axes[0]
    assert (iso.get_xlabel(), iso.get_title()) == ("parameters", "crammed: equal budget (tokens)")
    assert plots.training_curves(trials, curves).axes[0].get_xlabel() == "training tokens"
    assert plots.residuals(trials, fit).axes[0].get_ylabel() == "log observed − log predicted loss"


def test_iso_flop_only_where_every_trial_used_its_budget(study):
    trials, _, _ = study
    exact = trials.assign(budget_unit="flops", budget=trials["tokens"] * 1e3, flops=trials["tokens"] * 1e3)
    assert plots.iso_budget(exact).axes[0].get_title() == "crammed: iso-FLOP"
    small = exact["size"] == "small"
    over = exact.assign(flops=exact["flops"].where(~small, exact["budget"] * 1.48))
    assert plots.iso_budget(over).axes[0].get_title() == (
        "crammed: equal nominal FLOP budgets; actual FLOPs over by +48% (small)")


def test_unidentified_parameters_are_flagged_in_titles_and_legends(study):
    trials, _, fit = study
    law = fit["compute"]["crammed"]
    flagged = {**law, "parameters": {**law["parameters"],
                                     "alpha": {**law["parameters"]["alpha"], "identified": False,
                                               "reason": "on its upper bound, alpha = 2"}}}
    (ax,) = plots.loss_vs_compute(trials, {**fit, "compute": {**fit["compute"], "crammed": flagged}}).axes
    assert "$C^{-n.i.}$" in ax.get_title() and "not identified" in ax.get_title()
    assert "L(C), crammed: α = n.i." in ax.get_legend_handles_labels()[1]


def test_a_law_is_dashed_beyond_what_its_rollout_checked(study):
    trials, _, fit = study
    law = {**fit["compute"]["crammed"]}
    law["rollout"] = {**law["rollout"], "validated_factor": 1.0}  # checked to its largest trial only
    (ax,) = plots.loss_vs_compute(trials, {**fit, "compute": {**fit["compute"], "crammed": law}}).axes
    checked = law["largest_trial_flops"] * law["rollout"]["validated_factor"]
    solid, dashed = [line for line in ax.get_lines() if len(line.get_xdata()) > 2][:2]
    assert solid.get_linestyle() == "-" and max(solid.get_xdata()) <= checked
    assert dashed.get_linestyle() == "--" and max(dashed.get_xdata()) > checked


def test_residuals_say_which_points_a_rollout_refit_predicted(study):
    trials, _, fit = study
    labels = plots.residuals(trials, fit).axes[0].get_legend_handles_labels()[1]
    assert "L(C), crammed, held out by a rollout refit" in labels and "L(N, D), crammed, fitted" in labels


@pytest.mark.parametrize("devices, label", [({"cuda"}, "GPU-hours"), ({"cpu"}, "CPU-worker-hours"),
                                             ({"cuda", "cpu"}, "device-hours")])
def test_device_hours_axis_names_the_device(study, devices, label):
    trials, _, _ = study
    trials = trials.assign(device="cuda") if devices == {"cuda"} else trials
    trials = trials.assign(device="cpu") if devices == {"cpu"} else trials
    axes = plots.settings_comparison(trials).axes
    assert axes[0].get_xlabel() == "training FLOPs"
    assert axes[1].get_xlabel() == label


def test_each_seed_is_drawn_beside_its_mean(study):
    trials, _, _ = study
    second = trials.assign(trial=trials["trial"] + "-s1", eval_loss=trials["eval_loss"] * 1.01)
    seeds = pd.concat([trials, second])
    ax = plots.iso_budget(seeds).axes[0]
    assert "each seed" in ax.get_legend_handles_labels()[1]
    assert "each seed" not in plots.iso_budget(trials).axes[0].get_legend_handles_labels()[1]
