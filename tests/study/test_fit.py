"""A study table's laws: per setting and per law group, the fit.json layout, named budgets,
the rollout, extrapolation marks, comparisons, and tables with no law in them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crammit.errors import CrammitError
from crammit.study.fit import fit_study, law_group, write_fit
from crammit.study.laws import FitOptions, compute_frontier
from crammit.study.report import summarize
from crammit.study.spec import TrialStatus
from crammit.study.table import study_rows
from tests.helpers import on_every_core
from tests.study.test_laws import PARAMS_TOKENS, noisy, params_tokens_loss

SMOKE = Path(__file__).parents[2] / "notebooks" / "smoke_study" / "trials.parquet"


def study_table(seed=0, device="cpu", hours=(0.25, 0.5, 1, 2, 4, 8), noise=0.03):
    """A study as `crammit study` records it: two settings (archs), four sizes, six budgets,
    two trials each, plus a failed run and a run without a loss, both of which the fits leave out."""
    sizes = (("tiny", 3e6, 0.6), ("mini", 2e7, 0.8), ("small", 1e8, 0.9), ("base", 4e8, 1.0))
    rows = []
    for setting, speed in (("crammed", 2e13), ("baseline", 1e13)):
        for (size, params, mfu), budget, trial in itertools.product(sizes, hours, range(2)):
            flops = speed * mfu * 3600 * budget
            rows.append({"trial": f"{setting}-{size}-{budget}h-{trial}", "setting": setting, "arch": setting,
                         "recipe": "crammed", "size": size, "budget": budget, "budget_unit": "hours",
                         "params": params, "tokens": flops / (6 * params), "flops": flops,
                         "device_hours": budget, "device": device, "unique_tokens": 1e9,
                         "status": TrialStatus.OK.value})
    table = pd.DataFrame(rows)
    table["loss"] = noisy(params_tokens_loss(table["params"], table["tokens"]), seed, noise)
    table.loc[table["setting"] == "baseline", "loss"] *= 1.05  # the baseline is worse at every budget
    table.loc[0, "status"] = TrialStatus.FAILED.value
    table.loc[1, "loss"] = np.nan
    return table


@pytest.fixture(scope="module")
def study_fit():
    table = study_table()
    return table, fit_study(table, FitOptions(resamples=60))


def leaves(value):
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def test_fit_study_follows_the_fit_json_layout(study_fit, tmp_path):
    table, fit = study_fit
    json.dumps(fit, allow_nan=False)
    assert {type(leaf) for leaf in leaves(fit)} <= {str, int, float, bool, type(None)}  # no numpy scalars
    write_fit(tmp_path / "fit.json", fit)
    assert json.loads((tmp_path / "fit.json").read_text()) == fit
    assert fit["options"] == {"resamples": 60, "confidence": 0.95, "huber_delta": 1e-3, "seed": 0,
                              "params": "total", "starts": 8}
    assert fit["conventions"]["params"] == "total: the table's params column"
    assert fit["conventions"]["flops"].startswith("the table's flops column")
    assert fit["conventions"]["allocation"].startswith("C = c(N)·D")
    assert fit["table_points"] == len(table) - 2
    assert fit["dropped_rows"] == ["loss NaN at trial crammed-tiny-0.25h-1"] and fit["unfinished_runs"] == 1
    assert set(fit["compute"]) == {"baseline", "crammed"}
    # A law per arch: the two settings do not share one.
    assert set(fit["params_tokens"]) == {"baseline", "crammed"}
    parameter = {"estimate", "low", "high", "identified"}
    for section in [*fit["compute"].values(), *fit["params_tokens"].values()]:
        assert all(set(value) - {"reason", "bound"} == parameter for value in section["parameters"].values())
        assert set(section["fit"]) == {"rmse_log", "r2_log", "points", "gradient_norm", "resamples"}
        assert set(section["fit"]["resamples"]) == {"asked", "used", "degenerate", "failed"}
        assert set(section["rollout"]) == {
            "steps", "scored", "covered", "missed", "uninformative", "coverage", "mean_abs_relative_error",
            "median_relative_width", "validated_factor"}
        assert all(entry["extrapolation"] > 1 and "validated_factor" in entry
                   for entry in section["predictions"])
    crammed = fit["compute"]["crammed"]
    assert crammed["law"] == "L(C) = E + A * C^-alpha" and len(crammed["band"]) == 60
    assert all(entry["low"] <= entry["estimate"] <= entry["high"] for entry in crammed["band"])
    params_tokens = fit["params_tokens"]["crammed"]
    assert params_tokens["settings"] == ["crammed"] and len(params_tokens["compute_optimal"]) == 60
    assert set(params_tokens["points"][0]) == {
        "trial", "setting", "size", "params", "tokens", "flops", "loss", "predicted", "optimal_loss"}


@pytest.fixture(scope="module")
def wide_fit():
    """Three decades of compute at 2 % noise: a design that identifies L(N, D)."""
    return fit_study(study_table(hours=(0.25, 1, 4, 16, 64, 256), noise=0.02), FitOptions(resamples=60))


def test_seed_scatter_is_reported_per_configuration_and_pooled(study_fit):
    table, fit = study_fit
    scatter = fit["seed_scatter"]
    usable = table.iloc[2:]  # the failed run and the run without a loss leave tiny-0.25h without a repeat
    groups = usable.groupby(["setting", "size", "budget"])["loss"]
    assert len(scatter["configurations"]) == (groups.size() > 1).sum() == 2 * 4 * 6 - 1
    deviations = (usable["loss"] - groups.transform("mean")).pow(2).sum()
    assert scatter["overall"]["dof"] == len(usable) - groups.ngroups
    assert scatter["overall"]["sd"] == pytest.approx(np.sqrt(deviations / scatter["overall"]["dof"]))
    assert all(entry["seeds"] == 2 for entry in scatter["configurations"])
    assert "seeds: 47 configurations run 2 times; seed-to-seed sd of final loss" in summarize(fit)


def test_well_designed_laws_are_identified(wide_fit):
    for section in wide_fit["params_tokens"].values():
        assert all(value["identified"] for value in section["parameters"].values()), section["parameters"]
        assert section["allocation_identified"]
        alpha = section["parameters"]["alpha"]
        assert alpha["low"] <= PARAMS_TOKENS["alpha"] <= alpha["high"]


def test_named_budgets_carry_extrapolation_and_epochs(study_fit):
    table, fit = study_fit
    runs = table.iloc[2:].query("setting == 'crammed'")
    median_rate = np.median(runs["flops"] / runs["device_hours"])
    predictions = fit["params_tokens"]["crammed"]["predictions"]
    assert [p["name"] for p in predictions] == ["1 CPU-worker-day", "8 CPU-worker-days"]
    assert [p["flops"] for p in predictions] == pytest.approx([24 * median_rate, 192 * median_rate])
    assert [p["extrapolation"] for p in predictions] == pytest.approx(
        [24 * median_rate / runs["flops"].max(), 192 * median_rate / runs["flops"].max()])
    for prediction in predictions:
        assert prediction["epochs"] == pytest.approx(prediction["tokens"]["estimate"] / 1e9)
        rollout = fit["params_tokens"]["crammed"]["rollout"]
        assert prediction["validated_factor"] == rollout["validated_factor"]


@pytest.mark.parametrize(("device", "names"), [
    ("cuda", ["1 GPU-day", "8 GPU-days"]), (None, ["1 device-day", "8 device-days"])])
def test_named_budgets_are_named_by_device(device, names):
    table = study_table(device=device).query("setting == 'crammed'")
    if device is None:
        table = table.drop(columns="device")
    fit = fit_study(table, FitOptions(resamples=10))
    assert [p["name"] for p in fit["compute"]["crammed"]["predictions"]] == names


def test_every_held_out_run_is_scored_by_the_rollout(study_fit):
    table, fit = study_fit
    rollout = fit["params_tokens"]["crammed"]["rollout"]
    steps = rollout["steps"]
    assert [step["predicts"] for step in steps][:5] == [f"{hours:g} hours" for hours in (0.5, 1, 2, 4, 8)]
    assert steps[-1]["predicts"] == "the largest size (4e+08 parameters)"
    usable = table.iloc[2:].query("setting == 'crammed'")
    for step in steps:
        if "skipped" in step:
            continue
        held = usable[usable["params"] == 4e8] if "largest size" in step["predicts"] else \
            usable[usable["budget"] == float(step["predicts"].split()[0])]
        assert sorted(run["trial"] for run in step["runs"]) == sorted(held["trial"])  # none chosen by loss
        for run in step["runs"]:
            assert run["relative_error"] == pytest.approx((run["estimate"] - run["loss"]) / run["loss"])
            assert run["relative_width"] == pytest.approx((run["high"] - run["low"]) / run["loss"])
            assert run["verdict"] == ("uninformative" if run["relative_width"] > 1 else
                                      "covered" if run["low"] <= run["loss"] <= run["high"] else "missed")
        assert step["noise"]["source"] == "repeated trials"  # two trials of each size and budget
    assert rollout["scored"] == sum(len(step.get("runs", [])) for step in steps)
    assert rollout["covered"] + rollout["missed"] + rollout["uninformative"] == rollout["scored"]
    assert rollout["mean_abs_relative_error"] < 0.1 and rollout["coverage"] >= 0.8
    # L(C) predicts the lowest loss a budget reaches: the seeds of its best size (here two).
    for step in fit["compute"]["crammed"]["rollout"]["steps"]:
        assert len({run["trial"].rsplit("-", 1)[0] for run in step.get("runs", [])}) <= 1
        assert len(step.get("runs", [])) in (0, 2)


def test_settings_are_compared_at_each_named_budget(wide_fit):
    comparisons = wide_fit["comparisons"]
    assert {(entry["budget"], entry["law"]) for entry in comparisons} == {
        ("1 CPU-worker-day", "L(N, D)"), ("8 CPU-worker-days", "L(N, D)")}
    for entry in comparisons:
        assert entry["settings"] == ["baseline", "crammed"]
        difference = entry["difference"]
        first, second = (loss["estimate"] for loss in entry["loss"])
        assert difference["estimate"] == pytest.approx(first - second)
        assert 0 < difference["low"] <= difference["estimate"] <= difference["high"]  # the baseline is worse


def test_a_crammed_vs_bert_design_gets_laws_per_setting_and_no_bare_pooled_law():
    # crammed_vs_bert.toml: one size, two archs, two recipes, four budgets, tokens ~10 % apart
    # between recipes (each arch's size has its own parameter count).
    rows = []
    for (arch, params), (recipe, speed), hours in itertools.product(
            (("crammed", 2.035e6), ("bert", 2.28e6)), (("crammed", 1.0), ("bert", 0.9)), (3, 6, 12, 24)):
        tokens = 1e5 * hours * speed
        loss = 3 + (2.0 if recipe == "bert" else 0) + (0.3 if arch == "bert" else 0) + 40 / tokens**0.3
        rows.append({"setting": f"{arch}_{recipe}", "arch": arch, "recipe": recipe, "params": params,
                     "tokens": tokens, "flops": 6 * params * tokens, "loss": loss, "budget": hours,
                     "device_hours": hours, "device": "cuda"})
    table = pd.DataFrame(rows)
    fit = fit_study(table, FitOptions(resamples=60))
    assert set(fit["params_tokens"]) == {"bert_bert", "bert_crammed", "crammed_bert", "crammed_crammed"}
    for section in fit["params_tokens"].values():
        assert section["skipped"].startswith("one model size") and "L(C) only" in section["skipped"]
    for section in fit["compute"].values():
        alpha = section["parameters"]["alpha"]
        assert alpha["estimate"] >= 0 and (alpha["low"] is None or alpha["low"] >= 0)
    # Without L(N, D), the settings are compared under L(C): each pair at each named budget.
    assert {entry["law"] for entry in fit["comparisons"]} == {"L(C)"} and len(fit["comparisons"]) == 6 * 2
    # Pooled into one law (no setting or arch column), the law is flagged, not printed bare.
    pooled = fit_study(table.drop(columns=["setting", "arch", "recipe"]), FitOptions(resamples=60))
    law = pooled["params_tokens"]["all"]
    assert "skipped" in law or not all(value["identified"] for value in law["parameters"].values())
    if "skipped" not in law:
        assert all(0 <= law["parameters"][name]["estimate"] <= 2 for name in ("alpha", "beta"))


def test_every_smoke_trial_is_on_or_above_its_compute_optimal_curve():
    trials = study_rows(pd.read_parquet(SMOKE))
    fit = fit_study(trials, FitOptions(resamples=60))
    points = fit["params_tokens"]["crammed"]["points"]
    # The law at a trial's own N and D is never below the law's optimum at its FLOPs: the
    # allocation uses the trials' own FLOPs per token, so each trial is one allocation of its C.
    assert all(point["predicted"] >= point["optimal_loss"] - 1e-9 for point in points)
    # Nine runs over a factor of four in compute cannot pin E: it is printed as not identified.
    assert fit["compute"]["crammed"]["parameters"]["E"]["identified"] is False
    lines = summarize(fit).splitlines()
    law = next(i for i, line in enumerate(lines) if line.startswith("L(C) = E + A*C^-alpha, crammed"))
    assert lines[law + 1].startswith("  E      not identified (")


def test_the_non_embedding_convention_is_recorded():
    table = study_table().assign(non_embedding_params=lambda t: t["params"] * 0.5)
    fit = fit_study(table.query("setting == 'crammed'"), FitOptions(resamples=10, params="non-embedding"))
    assert fit["conventions"]["params"] == "non-embedding: the table's non_embedding_params column"
    assert fit["params_tokens"]["crammed"]["points"][0]["params"] == table["params"].iloc[2] * 0.5
    with pytest.raises(CrammitError, match="lacks column\\(s\\) non_embedding_params"):
        fit_study(study_table(), FitOptions(resamples=10, params="non-embedding"))


def test_a_loss_that_does_not_fall_with_compute_is_no_law():
    constant = pd.DataFrame({"params": np.repeat([1e6, 2e6, 4e6], 3), "tokens": np.tile([1e8, 2e8, 4e8], 3),
                             "loss": 4.0})
    with pytest.raises(CrammitError, match="^no law: the loss is 4 in all 9 runs"):
        fit_study(constant)
    rising = constant.assign(loss=lambda t: 3 + t["params"] * t["tokens"] / 1e15)
    with pytest.raises(CrammitError, match="^no law: loss does not fall with compute"):
        fit_study(rising)


def test_too_few_points_for_any_law_is_a_user_error():
    table = pd.DataFrame({"params": [1e6, 2e6, 4e6], "tokens": [1e9, 1e9, 1e8], "loss": [4.0, 3.5, 3.9]})
    with pytest.raises(CrammitError, match="no scaling law can be fitted to 3 usable runs") as error:
        fit_study(table)
    assert "L(N, D) of all: 3 distinct (N, D) points" in str(error.value)
    assert "L(C) needs at least 4" in str(error.value)


def test_frontier_is_the_lower_envelope():
    flops = [1, 2, 2, 3, 4, 5, 5]
    loss = [5.0, 4.0, 4.5, 4.2, 3.0, 3.0, 2.0]
    # 3 has more compute than 2 but a higher loss; of the two at 5 only the lower counts.
    assert compute_frontier(flops, loss).tolist() == [True, True, False, False, True, False, True]
    assert compute_frontier([1, 2, 2], [5, 4, 4]).tolist() == [True, True, True]  # ties are both on it


def rollout_table(seed):
    """5 sizes x 6 FLOP budgets (3 decades) drawn from a known law with 2 % noise."""
    rows = [{"setting": "s", "params": n, "tokens": c / (6 * n), "flops": c, "budget": c,
             "budget_unit": "flops"}
            for n, c in itertools.product(np.geomspace(1e7, 1e9, 5), np.geomspace(1e17, 1e20, 6))]
    table = pd.DataFrame(rows)
    return table.assign(loss=noisy(params_tokens_loss(table["params"], table["tokens"]), seed, 0.02))


def _rollout_of_study(seed: int) -> dict:
    """The rollout of fit.json's L(N, D) section, fitted as `fit_study` fits it, without the
    L(C) fits this test does not read."""
    options = FitOptions(resamples=60, seed=seed)
    section, _ = law_group(rollout_table(seed), "s", options).params_tokens(options)
    return section["rollout"]


@pytest.mark.slow
def test_rollout_prediction_intervals_cover_held_out_runs_at_their_rate():
    rollouts = on_every_core(_rollout_of_study, range(50))
    covered, missed, uninformative = (sum(rollout[verdict] for rollout in rollouts)
                                      for verdict in ("covered", "missed", "uninformative"))
    widths = [rollout["median_relative_width"] for rollout in rollouts]
    print(f"covered {covered}, missed {missed}, uninformative {uninformative}, "
          f"median width {np.median(widths):.3f}")
    assert 0.85 <= covered / (covered + missed) <= 0.99
    assert uninformative == 0 and np.median(widths) < 0.25


def test_a_law_the_runs_do_not_pin_is_not_extrapolated():
    """The README's CPU example (tiny and mini at 1e6, 2e6 and 4e6 tokens): four frontier runs
    give every resample the same L(C), and no rollout can check it, so the CPU-worker-days
    ~19x beyond its largest trial are not predicted, nor compared."""
    sizes = {"tiny": (5180929, [1.3389e13, 2.6751e13, 5.3501e13], [6.22361, 6.01964, 5.80876]),
             "mini": (11015169, [2.9928e13, 5.9796e13, 1.19591e14], [6.04840, 5.87973, 5.68514])}
    rows = [{"trial": f"crammed-{size}-{tokens:g}tok", "setting": "crammed", "size": size, "params": params,
             "tokens": tokens, "flops": flops, "loss": loss, "budget": tokens, "budget_unit": "tokens",
             "device_hours": flops / 6e13, "device": "cpu", "unique_tokens": 2030336}
            for size, (params, all_flops, losses) in sizes.items()
            for tokens, flops, loss in zip((1e6, 2e6, 4e6), all_flops, losses, strict=True)]
    fit = fit_study(pd.DataFrame(rows), FitOptions(resamples=300))
    law = fit["compute"]["crammed"]
    assert not any(value["identified"] for value in law["parameters"].values())
    assert all(not prediction["supported"] and "not identified" in prediction["reason"]
               for prediction in law["predictions"])
    text = summarize(fit)
    assert "loss not predicted (the law's E, A, alpha are not identified and" in text
    assert "[5.3" not in text  # no interval of no width is printed as a number
