"""Chinchilla's approaches 1 and 2 beside the parametric law: IsoFLOP minima and exponents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crammit.study import plots
from crammit.study.allocation import FlopsPerToken
from crammit.study.fit import fit_study
from crammit.study.isoflop import allocation_exponents, isoflop_minimum
from crammit.study.laws import FitOptions
from tests.study.test_laws import PARAMS_TOKENS, params_tokens_loss

TRUE_A = PARAMS_TOKENS["beta"] / (PARAMS_TOKENS["alpha"] + PARAMS_TOKENS["beta"])


def optimal_params(flops):
    """The known law's N_opt under C = 6·N·D."""
    law = PARAMS_TOKENS
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
    return g * (flops / 6) ** TRUE_A


def isoflop_grid(seed, noise=0.01):
    """5 FLOP budgets over four decades x 5 sizes from N_opt/8 to 8 N_opt, no flops column (C = 6·N·D)."""
    rows = [{"params": optimal_params(flops) * factor, "tokens": flops / (6 * optimal_params(flops) * factor),
             "budget": flops, "budget_unit": "flops"}
            for flops in np.geomspace(1e18, 1e22, 5) for factor in np.geomspace(1 / 8, 8, 5)]
    table = pd.DataFrame(rows)
    scatter = np.exp(noise * np.random.default_rng(seed).standard_normal(len(table)))
    return table.assign(loss=params_tokens_loss(table["params"], table["tokens"]) * scatter,
                        flops=6 * table["params"] * table["tokens"], setting="s")


def test_the_minimum_of_a_parabola_in_log_n():
    params = np.geomspace(1e6, 1e8, 5)
    loss = 3 + 0.2 * (np.log(params) - np.log(4e6)) ** 2
    n_opt, bracketed, coefficients = isoflop_minimum(params, loss)
    assert n_opt == pytest.approx(4e6) and bracketed and coefficients[0] == pytest.approx(0.2)
    assert isoflop_minimum(params, -loss) is None  # no minimum
    assert isoflop_minimum(params[:2], loss[:2]) is None  # two sizes make no profile
    assert not isoflop_minimum(params, 3 + 0.2 * (np.log(params) - np.log(1e9)) ** 2)[1]  # not bracketed


def test_approach_2_recovers_the_allocation_exponent():
    # 1 % noise on five sizes a budget: a within 5 % of beta / (alpha + beta) in 19 of 20 seeds.
    estimates = []
    for seed in range(20):
        table = isoflop_grid(seed)
        per_token = FlopsPerToken.from_trials(table["params"], table["tokens"], table["flops"])
        configurations = table["params"].astype(str)
        options = FitOptions(resamples=1, seed=seed)
        found = allocation_exponents(table, configurations, per_token, None, options)
        estimates.append(found["isoflop"]["a"]["estimate"])
    within = np.abs(np.array(estimates) / TRUE_A - 1) < 0.05
    assert within.mean() >= 0.9, estimates


def test_the_three_approaches_are_put_side_by_side_and_drawn():
    fit = fit_study(isoflop_grid(0), FitOptions(resamples=100))
    exponents = fit["params_tokens"]["s"]["allocation_exponents"]
    for approach in ("frontier", "isoflop", "parametric"):
        a, b = exponents[approach]["a"], exponents[approach]["b"]
        assert a["identified"] and a["low"] <= a["estimate"] <= a["high"]
        assert a["estimate"] + b["estimate"] == pytest.approx(1, abs=0.02)  # C = 6·N·D: a + b = 1
    assert exponents["isoflop"]["a"]["low"] <= TRUE_A <= exponents["isoflop"]["a"]["high"]
    assert exponents["agreement"] == "their intervals for a overlap"
    profiles = exponents["isoflop_profiles"]
    assert len(profiles) == 5 and all(profile["bracketed"] for profile in profiles)
    profile_ax, optimum_ax = plots.allocation_approaches(fit).axes[:2]
    labels = optimum_ax.get_legend_handles_labels()[1]
    assert [label.split(", a = ")[0] for label in labels] == [
        "s: (1) frontier", "s: (2) IsoFLOP minima", "s: (3) L(N, D)"]
    assert "their intervals for a overlap" in optimum_ax.get_title()


def test_too_few_flop_budgets_leave_approach_2_unfitted():
    table = isoflop_grid(0).query("budget <= 1e19")  # two budgets: no IsoFLOP slope
    fit = fit_study(table, FitOptions(resamples=60))
    exponents = fit["params_tokens"]["s"]["allocation_exponents"]
    assert exponents["isoflop"] == {"skipped": "fewer than 3 FLOP budgets have a profile of 3+ sizes with "
                                               "a minimum"}
    with pytest.raises(plots.NothingToDraw):
        plots.allocation_approaches({**fit, "params_tokens": {}})
