"""The plan a study prints before training: GPU-hours, wall time, and what cannot run."""

import dataclasses

import pandas as pd
import pytest

from crammit.cluster import ClusterResources
from crammit.study.plan import TRIAL_OVERHEAD_S, Calibration, TrialModel, concurrent_trials, make_plan
from crammit.study.spec import Setting, StudyGlue, StudySpec, StudyUnit, TrialStatus

SCALING = StudySpec("scaling", (Setting("crammed", ("small", "base", "crammed"), (6, 12, 24), gpus=1),))


def pending(spec: StudySpec, **done) -> pd.DataFrame:
    """A trial table with every trial pending except `done` (name -> (flops, elapsed_s))."""
    rows = [{"trial": t.name, "setting": t.setting.name, "size": t.size, "status": TrialStatus.PENDING.value,
             "flops": None, "elapsed_s": None} for t in spec.trials()]
    for row in rows:
        if row["trial"] in done:
            flops, elapsed_s = done[row["trial"]]
            row.update(status=TrialStatus.OK.value, flops=flops, elapsed_s=elapsed_s)
    return pd.DataFrame(rows)


def flops_per_token(spec: StudySpec) -> dict[tuple[str, str], TrialModel]:
    """Every size at 1e8 parameters and 1e9 FLOPs per token."""
    return {(setting.name, size): TrialModel(int(1e8), 1e9)
            for setting in spec.settings for size in setting.sizes}


def test_hours_study_on_eight_gpus():
    plan = make_plan(SCALING, pending(SCALING), ClusterResources(64, 8, "H100"), flops_per_token(SCALING))
    assert plan.gpu_hours == 3 * (6 + 12 + 24)
    assert plan.concurrent_trials == 8
    assert plan.wall_hours == 24  # eight at once, longest first: the ninth (6 h) follows a 6 h one
    assert plan.problem == ""
    assert "126.00 GPU-hours" in plan.render() and "GLUE" not in plan.render()


def test_the_plan_counts_the_glue_fine_tunes_that_follow():
    spec = dataclasses.replace(SCALING, glue=StudyGlue(tasks=("rte", "mrpc"), seeds=5))
    plan = make_plan(spec, pending(spec), ClusterResources(64, 8, "H100"), flops_per_token(spec))
    assert "fine-tuned on rte, mrpc with 5 seed(s), 90 fine-tunes in all" in plan.render()


def test_a_machine_without_gpus_is_told_it_cannot_run_it():
    plan = make_plan(SCALING, pending(SCALING), ClusterResources(2, 0), flops_per_token(SCALING))
    assert plan.wall_hours == 3 * 42  # one trial at a time: five days and six hours
    text = plan.render()
    assert "cannot run this study as asked" in text and "--gpus-per-trial 0" in text
    assert "(5.2 days)" in text


def test_finished_trials_are_not_planned_again_and_time_token_budgets():
    spec = StudySpec("t", (Setting("cpu", ("tiny",), (1e6, 2e6), gpus=0),), unit=StudyUnit.TOKENS)
    cluster = ClusterResources(2, 0)
    unknown = make_plan(spec, pending(spec), cluster, flops_per_token(spec))
    assert unknown.wall_hours is None and "unknown" in unknown.render()
    # The finished 1e6-token trial did its 1e15 FLOPs in an hour: the 2e6-token one takes two.
    finished = pending(spec, **{"cpu-tiny-1e6tok": (1e15, 3600.0)})
    measured = make_plan(spec, finished, cluster, flops_per_token(spec))
    assert measured.wall_hours == pytest.approx(2.0 + TRIAL_OVERHEAD_S / 3600)  # and its start-up
    assert [t.status for t in measured.trials] == [TrialStatus.OK, TrialStatus.PENDING]


def test_token_budgets_on_known_gpus_are_timed_at_the_assumed_mfu():
    spec = StudySpec("t", (Setting("g", ("tiny",), (1e12,), gpus=2),), unit=StudyUnit.TOKENS)
    plan = make_plan(spec, pending(spec), ClusterResources(16, 8, "H100"), flops_per_token(spec))
    assert plan.gpu_hours is not None and plan.gpu_hours > 0 and "MFU" in plan.estimate_note


def test_concurrency_follows_the_trials_needs():
    two_gpu = StudySpec("t", (Setting("g", ("tiny",), (1,), gpus=2),))
    assert concurrent_trials(two_gpu, ClusterResources(32, 8)) == 4
    cpu = StudySpec("t", (Setting("c", ("tiny",), (1,), gpus=0, workers=2),))
    assert concurrent_trials(cpu, ClusterResources(9, 0)) == 4  # a core for each worker's threads


def test_a_calibration_times_cpu_token_budgets_before_any_trial_finishes():
    spec = StudySpec("t", (Setting("cpu", ("tiny",), (1e6, 2e6), gpus=0),), unit=StudyUnit.TOKENS)
    calibration = Calibration({("cpu", "tiny"): 1e9 * 1000}, 20.0, 1)  # 1000 tokens/s
    plan = make_plan(spec, pending(spec), ClusterResources(2, 0), flops_per_token(spec),
                     calibrated=calibration)
    overhead = TRIAL_OVERHEAD_S / 3600
    hours = [trial.hours for trial in plan.trials]
    assert hours == pytest.approx([1000 / 3600 + overhead, 2000 / 3600 + overhead])
    assert plan.wall_hours == pytest.approx(2000 / 3600 + overhead)  # two at a time on two cores
    assert "20-s calibration of the sizes on this machine (1 torch thread(s) a worker" in plan.render()
