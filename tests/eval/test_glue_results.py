"""A run's GLUE results on disk: the summary, the average, a study's columns, failures."""

from __future__ import annotations

import pandas as pd
import pytest

from crammit.eval.glue_data import TASKS, target_names
from crammit.eval.glue_results import (
    RESULTS_FILE,
    FinetuneJob,
    Init,
    average,
    glue_dir,
    render,
    save_failure,
    trial_columns,
    write_summary,
)
from tests.helpers import write_glue_result


def test_summary_medians_spreads_and_the_full_average(tmp_path):
    for seed, value in enumerate((0.5, 0.7, 0.6)):
        write_glue_result(tmp_path, "mrpc", seed, {"f1": value, "accuracy": value - 0.1})
    summary = write_summary(tmp_path)
    f1 = summary["tasks"]["mrpc"]["metrics"]["f1"]
    assert (f1["median"], f1["min"], f1["max"]) == pytest.approx((60, 50, 70))
    assert summary["average"]["value"] == pytest.approx(60)  # the target, F1, not accuracy
    assert "mrpc only (1 of 8" in summary["average"]["label"]
    assert "mrpc   f1*" in render(summary) and "average over mrpc only" in render(summary)
    assert len(pd.read_parquet(glue_dir(tmp_path) / RESULTS_FILE)) == 3

    # All eight tasks: MNLI's matched and mismatched count as two of the nine numbers.
    tasks = {name: {"metrics": {target: {"median": 80.0} for target in target_names(task)},
                    "targets": target_names(task)} for name, task in TASKS.items()}
    tasks["mnli"]["metrics"]["mismatched_accuracy"]["median"] = 71.0
    full = average(tasks)
    assert full["complete"] and full["label"] == "GLUE average (8 tasks)"
    assert full["value"] == pytest.approx((8 * 80 + 71) / 9)


def test_a_study_trial_s_columns_average_only_once_every_task_has_a_score(tmp_path):
    tasks = (TASKS["rte"], TASKS["mnli"])
    assert trial_columns(tmp_path, tasks) == {"glue_rte_accuracy": None, "glue_mnli_matched_accuracy": None,
                                              "glue_mnli_mismatched_accuracy": None, "glue_average": None}
    write_glue_result(tmp_path, "rte", 0, {"accuracy": 0.6})
    write_summary(tmp_path)
    columns = trial_columns(tmp_path, tasks)
    assert columns["glue_rte_accuracy"] == pytest.approx(60) and columns["glue_average"] is None
    write_glue_result(tmp_path, "mnli", 0, {"matched_accuracy": 0.7, "mismatched_accuracy": 0.8})
    write_summary(tmp_path)
    assert trial_columns(tmp_path, tasks)["glue_average"] == pytest.approx(70)


def test_a_failure_is_recorded_beside_the_result_until_a_retry_succeeds(tmp_path):
    job = FinetuneJob(str(tmp_path), "rte", 0, Init.PRETRAINED)
    save_failure(job, "RuntimeError: CUDA out of memory")
    assert job.error_path().read_text() == "RuntimeError: CUDA out of memory\n"
    assert job.error_path().parent == job.result_path().parent and not job.result_path().exists()
    assert write_summary(tmp_path)["tasks"] == {}  # a failure is no result

    write_glue_result(tmp_path, "rte", 0, {"accuracy": 0.5})
    assert job.result_path().is_file() and not job.error_path().exists()
    assert list(write_summary(tmp_path)["tasks"]) == ["rte"]
