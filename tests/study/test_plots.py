"""The study figures: every figure is written when its data is there, skipped cleanly when
not, and its axes say what they measure and in which units."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from crammit.study import plots

FIGURES = {"loss_vs_compute", "compute_frontier", "settings_comparison", "iso_budget", "training_curves",
           "residuals", "glue_vs_compute"}
PARAMS = {"tiny": 2.1e6, "mini": 1.1e7, "small": 2.9e7, "medium": 4.2e7, "large": 3.4e8}
E, A, ALPHA = 1.9, 3.0e2, 0.34  # the synthetic L(N, D): E + A/N^alpha + B/D^beta
B, BETA = 2.0e2, 0.28
COMPUTE_A, COMPUTE_ALPHA = 8.0e2, 0.16  # the synthetic L(C) = E + A·C^-alpha of `crammed`


def _loss(params: float, tokens: float) -> float:
    return E + A / params**ALPHA + B / tokens**BETA


def _compute_loss(flops: float) -> float:
    return E + COMPUTE_A * flops**-COMPUTE_ALPHA


def _optimal(flops: float, spread: float) -> dict:
    """The synthetic compute-optimal N, D and loss at `flops`, as fit.json writes them."""
    params = 1.4 * (flops / 6) ** 0.45
    tokens = flops / 6 / params
    return {"flops": flops, "params": _interval(params, spread), "tokens": _interval(tokens, spread),
            "loss": _interval(_loss(params, tokens), spread / 5)}


def _interval(estimate: float, spread: float = 0.05) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate * (1 - spread), "high": estimate * (1 + spread)}


def _trial(setting: str, size: str, budget: float, unit: str, tokens: float, status: str = "ok") -> dict:
    params, device = PARAMS[size], "cuda" if setting == "large-1gpu" else "cpu"
    flops = 6 * params * tokens
    jitter = 1 + 0.02 * math.sin(params * tokens)  # deterministic scatter around the law
    ok = status == "ok"
    loss = _loss(params, tokens)
    glue = {"glue_rte_accuracy": 120 - 12 * loss, "glue_mrpc_f1": 130 - 12 * loss}  # better with lower loss
    return {
        **{column: value if ok else None for column, value in glue.items()},
        "glue_average": sum(glue.values()) / 2 if ok else None,
        "trial": f"{setting}-{size}-{budget:g}{unit}", "setting": setting, "size": size, "recipe": "bert-o4",
        "gpus": int(device == "cuda"), "workers": 1 if device == "cuda" else 2, "device": device,
        "budget": budget, "budget_unit": unit, "params": int(params),
        "non_embedding_params": int(params * 0.6), "tokens": int(tokens), "flops": flops,
        "elapsed_s": flops / 2e13, "gpu_hours": 0.0, "device_hours": flops / 2e13 / 3600,
        "eval_loss": _loss(params, tokens) * jitter if ok else None, "initial_eval_loss": 10.4,
        "status": status, "error": None if ok else "diverged",
    }


def study_tables() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A small study in fit.json's layout: 3 sizes x 3 token budgets in `crammed`, 2 hour
    budgets of `large-1gpu` (too few for its own L(C)) and one failed trial."""
    rows = [_trial("crammed", size, budget, "tokens", budget)
            for size in ("tiny", "mini", "small") for budget in (2e7, 6e7, 2e8)]
    rows += [_trial("large-1gpu", "large", hours, "hours", hours * 3e8) for hours in (1.0, 4.0)]
    rows.append(_trial("crammed", "medium", 2e8, "tokens", 2e8, status="failed"))
    trials = pd.DataFrame(rows)
    trials.loc[trials["device"] == "cuda", "gpu_hours"] = trials["device_hours"]

    curves = pd.DataFrame([
        {"trial": t.trial, "setting": t.setting, "size": t.size, "budget": t.budget,
         "budget_unit": t.budget_unit, "step": step, "tokens": t.tokens * step / 20,
         "flops": t.flops * step / 20, "elapsed_s": t.elapsed_s * step / 20,
         "loss": _loss(t.params, t.tokens * step / 20) * 1.03, "lr": 1e-3, "batch_size": 256,
         "tokens_per_s": 1e5, "mfu": None}
        for t in trials[trials["status"] == "ok"].itertuples() for step in range(1, 21)])

    ok = trials[trials["status"] == "ok"]
    compute = {}
    for setting, group in ok.groupby("setting"):
        group = group.sort_values("flops")
        frontier = group["eval_loss"] <= group["eval_loss"].cummin()
        points = [{"trial": t.trial, "size": t.size, "flops": t.flops, "loss": t.eval_loss,
                   "predicted": _compute_loss(t.flops), "frontier": bool(f)}
                  for t, f in zip(group.itertuples(), frontier, strict=True)]
        if len(group) < 4:
            compute[setting] = {"skipped": f"{len(group)} points; L(C) needs at least 4", "points": points}
            continue
        grid = np.geomspace(group["flops"].min() / 2, 1e19, 30)
        compute[setting] = {
            "law": "L(C) = E + A * C^-alpha",
            "parameters": {"E": _interval(E), "A": _interval(COMPUTE_A, 0.5),
                           "alpha": _interval(COMPUTE_ALPHA, 0.1)},
            "converged": True, "failed_resamples": 0, "residual_rms": 0.01, "points": points,
            "band": [{"flops": c, **_interval(_compute_loss(c), 0.02 + 0.01 * math.log10(c / grid[0]))}
                     for c in grid],
            "predictions": [{"name": "1 GPU-day", "flops": 7e18, **_interval(_compute_loss(7e18), 0.08)}],
            "holdout": {"held_out": [{"trial": "x", "flops": 3e17, "loss": 3.1,
                                      **_interval(_compute_loss(3e17)), "relative_error": 0.01,
                                      "covered": True}],
                        "mean_abs_relative_error": 0.01, "coverage": 1.0},
        }

    params_tokens = {
        "law": "L(N, D) = E + A / N^alpha + B / D^beta",
        "parameters": {"E": _interval(E), "A": _interval(A, 0.5), "B": _interval(B, 0.5),
                       "alpha": _interval(ALPHA, 0.1), "beta": _interval(BETA, 0.1)},
        "converged": True, "failed_resamples": 3, "residual_rms": 0.012,
        "points": [{"trial": t.trial, "setting": t.setting, "size": t.size, "params": t.params,
                    "tokens": t.tokens, "flops": t.flops, "loss": t.eval_loss,
                    "predicted": _loss(t.params, t.tokens)} for t in ok.itertuples()],
        "compute_optimal": [_optimal(c, 0.3) for c in np.geomspace(1e14, 1e19, 30)],
        "predictions": [{"name": "1 GPU-day", **_optimal(7e18, 0.4)}],
        "holdout": {"skipped": "too few budgets"},
    }
    fit = {"options": {"resamples": 200, "confidence": 0.95, "huber_delta": 1e-3, "seed": 0},
           "table_points": len(ok), "compute": compute, "params_tokens": params_tokens}
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
    bare_fit = {**fit, "params_tokens": {"skipped": "5 points; L(N, D) needs at least 6"},
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
    assert laws == ["L(C), crammed: α = 0.16 [0.144, 0.176]"]  # large-1gpu has too few points
    figure = plots.loss_vs_compute(trials, {**fit, "compute": {}})
    (ax,) = figure.axes
    assert len(ax.collections[0].get_offsets()) == (trials["status"] == "ok").sum()  # failed trial left out
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
    assert "L(C) = 1.9 + 800·$C^{-0.16}$ (crammed)" in ax.get_title()
    loss_ax, allocation_ax = plots.compute_frontier(trials, fit).axes[:2]
    assert allocation_ax.get_ylabel() == "parameters N, training tokens D"
    assert "$N^{0.34}$" in loss_ax.figure.get_suptitle()
    iso = plots.iso_budget(trials).axes[0]
    assert (iso.get_xlabel(), iso.get_title()) == ("parameters", "crammed: equal budget (tokens)")
    assert plots.training_curves(trials, curves).axes[0].get_xlabel() == "training tokens"
    assert plots.residuals(trials, fit).axes[0].get_ylabel() == "log observed − log predicted loss"


def test_iso_flop_budgets_are_named_so(study):
    trials, _, _ = study
    flops_budgets = trials.assign(budget_unit="flops", budget=trials["tokens"] * 1e3)
    assert plots.iso_budget(flops_budgets).axes[0].get_title() == "crammed: iso-FLOP"


@pytest.mark.parametrize("devices, label", [({"cuda"}, "GPU-hours"), ({"cpu"}, "CPU-worker-hours"),
                                             ({"cuda", "cpu"}, "device-hours")])
def test_device_hours_axis_names_the_device(study, devices, label):
    trials, _, _ = study
    trials = trials.assign(device="cuda") if devices == {"cuda"} else trials
    trials = trials.assign(device="cpu") if devices == {"cpu"} else trials
    axes = plots.settings_comparison(trials).axes
    assert axes[0].get_xlabel() == "training FLOPs"
    assert axes[1].get_xlabel() == label
