"""A plan's expected precision: the reference law, simulated studies that match what the
bootstrap of a real study prints, and a better design proposed."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pandas as pd
import pytest

from crammit.cluster import ClusterResources
from crammit.errors import CrammitError
from crammit.study import precision as precision_module
from crammit.study.design import suggest_design
from crammit.study.laws import FitOptions, fit_params_tokens_law
from crammit.study.plan import trial_design
from crammit.study.precision import (
    CHINCHILLA,
    DEFAULT_NOISE,
    ReferenceLaw,
    design_precision,
    expected_precision,
    reference_law,
    simulation_pool,
)
from crammit.study.spec import Setting, StudySpec, read_study_file, write_study_file
from crammit.study.sweep import trial_models
from tests.helpers import on_every_core

LAW = ReferenceLaw(1.8, 400.0, 2000.0, 0.34, 0.37, "the test law")
NARROW = ((1e7, 4e7), (1e17, 4e17), 3)  # 3 sizes x 3 budgets over a factor of 4 each
WIDE = ((1e6, 1e9), (1e16, 1e21), 6)  # 6 x 6 over three and five decades


def design(params, flops, count):
    rows = [{"trial": f"n{n:.3g}-c{c:.3g}", "params": n, "tokens": c / (6 * n), "flops": c,
             "law_group": "g"}
            for n, c in itertools.product(np.geomspace(*params, count), np.geomspace(*flops, count))]
    return pd.DataFrame(rows)


def test_the_reference_law_is_chinchillas_numbers_or_a_fit(tmp_path):
    assert reference_law(None) is CHINCHILLA
    given = reference_law("1.8,400,2000,0.34,0.37")
    assert (given.E, given.A, given.B, given.alpha, given.beta) == (1.8, 400, 2000, 0.34, 0.37)
    fit = tmp_path / "fit.json"
    values = (2, 300, 900, 0.3, 0.3)
    parameters = {name: {"estimate": value, "identified": True}
                  for name, value in zip(("E", "A", "B", "alpha", "beta"), values, strict=True)}
    fit.write_text(json.dumps({"params_tokens": {"crammed": {"parameters": parameters}}}))
    assert reference_law(str(fit)).alpha == 0.3 and "crammed" in reference_law(str(fit)).source
    parameters["E"]["identified"] = False
    fit.write_text(json.dumps({"params_tokens": {"crammed": {"parameters": parameters}}}))
    for text, fragment in [("1,2,3", "five positive numbers"), ("1,2,3,4,x", "five positive numbers"),
                           ("1,2,3,-4,5", "five positive numbers"), (str(fit), "all identified"),
                           (str(tmp_path / "absent.json"), "does not exist")]:
        with pytest.raises(CrammitError, match=fragment):
            reference_law(text)


def test_a_narrow_design_is_told_what_it_will_not_identify():
    with simulation_pool() as pool:  # one for both plans, as a study's plan shares one
        precision = expected_precision(design(*NARROW), LAW, 0.02, "the test", {"1 GPU-day": 1e19}, pool=pool)
        wide = expected_precision(design(*WIDE), LAW, 0.02, "the test", {}, pool=pool)
    assert {"alpha", "beta", "E"} <= set(precision.unidentified)
    lines = precision.lines()
    assert lines[0].startswith("expected precision (5 simulated studies of this design from the test law")
    assert "loss at 1 GPU-day ±" in lines[0] and lines[1].startswith("this design will likely not identify: ")
    assert not {"alpha", "beta", "E"} & set(wide.unidentified)
    assert wide.half_widths["alpha"] < precision.half_widths["alpha"] / 5


def test_on_one_core_the_simulations_run_in_this_process(monkeypatch):
    monkeypatch.setattr(precision_module.os, "cpu_count", lambda: 1)
    with simulation_pool() as pool:
        assert pool.submit(os.getpid).result() == os.getpid()
        assert list(pool.map(abs, [-1, 2])) == [1, 2]


PARAMETERS = ("alpha", "beta", "E")


def _half_widths(study: tuple[pd.DataFrame, np.ndarray, int]) -> list[float]:
    """One simulated study of a design fitted as a real one is: each parameter's half-width."""
    layout, loss, seed = study
    options = FitOptions(resamples=100, seed=seed)
    fit = fit_params_tokens_law(layout["params"], layout["tokens"], loss, options)
    return [(fit.interval(parameter).high - fit.interval(parameter).low) / 2 for parameter in PARAMETERS]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("narrow", NARROW), ("wide", WIDE)])
def test_expected_half_widths_match_the_bootstrap_of_simulated_studies(name, shape):
    """The half-widths a plan prints are within a factor 1.5 of those 20 simulated studies of
    the design print when fitted with 100 resamples, 2 % noise."""
    layout = design(*shape)
    expected = expected_precision(layout, LAW, 0.02, "the test", {}, seed=7).half_widths
    draws = np.random.default_rng(11).standard_normal((20, len(layout)))
    studies = [(layout, LAW.loss(layout["params"], layout["tokens"]) * np.exp(0.02 * draw), study)
               for study, draw in enumerate(draws)]
    obtained = dict(zip(PARAMETERS, np.transpose(on_every_core(_half_widths, studies)), strict=True))
    ratios = {parameter: expected[parameter] / np.nanmean(widths) for parameter, widths in obtained.items()}
    print(name, ratios)
    assert all(1 / 1.5 <= ratio <= 1.5 for ratio in ratios.values()), ratios


@pytest.mark.slow
def test_a_suggestion_narrows_alpha_twofold_within_a_quarter_more_compute(tmp_path):
    """The user's 9-trial study (3 sizes x 6/12/24 GPU-hours, planned on this CPU machine as
    on an H100): the suggestion at least halves alpha's expected half-width, for at most 25 %
    more compute, and writes a study file that reads back."""
    spec = StudySpec("scaling", (Setting("crammed", ("small", "base", "crammed"), (6, 12, 24)),))
    cluster = ClusterResources(2, 0)

    def design_of(candidate: StudySpec) -> pd.DataFrame:
        return trial_design(candidate, trial_models(candidate), {}, cluster)

    def simulate(layout: pd.DataFrame):
        return design_precision(layout, CHINCHILLA, DEFAULT_NOISE, "the default")

    suggestion = suggest_design(spec, design_of, CHINCHILLA, DEFAULT_NOISE, simulate)
    assert suggestion.after.half_widths["alpha"] <= suggestion.before.half_widths["alpha"] / 2
    assert 0 < suggestion.extra_compute <= 0.25 and suggestion.added_trials > 0
    assert suggestion.lines()[0].startswith("suggestion: ")
    write_study_file(tmp_path / "suggested.toml", suggestion.spec)
    assert read_study_file(tmp_path / "suggested.toml") == suggestion.spec
