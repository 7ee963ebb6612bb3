"""GLUE evaluation: the grid on Ray Tune, resuming, the summary and the average."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crammit.config import GlueRecipe
from crammit.errors import CrammitError
from crammit.eval import glue
from crammit.eval.glue import Init, Placement, average, evaluate_glue, render, write_summary
from crammit.eval.glue_data import TASKS
from crammit.io import write_json
from tests.helpers import GLUE_WORDS, write_finished_run, write_glue_dir

RECIPE = GlueRecipe(epochs=1, batch_size=8, seq_len=32)


@pytest.fixture()
def finished_run(tmp_path) -> Path:
    return write_finished_run(tmp_path / "run", [" ".join(GLUE_WORDS)] * 20)


@pytest.mark.slow
def test_a_two_task_two_seed_grid_on_two_workers_then_resumes(tmp_path, finished_run, ray_session,
                                                                monkeypatch):
    glue_data = write_glue_dir(tmp_path / "glue")
    tasks, placement = (TASKS["rte"], TASKS["sst2"]), Placement(gpus=0, workers=2)
    evaluation = evaluate_glue([finished_run], tasks, [0, 1], RECIPE, glue_data, placement)
    assert evaluation.failed == []
    summary = evaluation.summaries[finished_run.resolve()]
    assert list(summary["tasks"]) == ["sst2", "rte"]  # GLUE's order
    for entry in summary["tasks"].values():
        values = entry["metrics"]["accuracy"]["values"]
        assert entry["seeds"] == [0, 1] and len(values) == 2 and all(0 <= v <= 100 for v in values)
        assert entry["metrics"]["accuracy"]["median"] == pytest.approx(sum(values) / 2)
        assert entry["train_examples"] == 40 and entry["source"].startswith("glue-dir:")
    assert summary["average"]["complete"] is False and "sst2, rte only" in summary["average"]["label"]
    table = pd.read_parquet(finished_run / "glue" / glue.RESULTS_FILE)
    assert len(table) == 4 and set(table["device"]) == {"cpu"}

    # Run again: every result is on disk, so nothing is fine-tuned and nothing changes.
    written = {path: path.stat().st_mtime_ns for path in (finished_run / "glue" / glue.SEEDS_DIR).iterdir()}
    monkeypatch.setattr(glue, "_tune", lambda *args: pytest.fail("a finished fine-tune ran again"))
    again = evaluate_glue([finished_run], tasks, [0, 1], RECIPE, glue_data, placement)
    assert again.summaries[finished_run.resolve()]["tasks"] == summary["tasks"]
    assert {path: path.stat().st_mtime_ns for path in written} == written


def fake_result(run_dir: Path, task: str, seed: int, scores: dict, recipe: GlueRecipe = RECIPE) -> None:
    write_json(glue.FinetuneJob(str(run_dir), task, seed, Init.PRETRAINED).result_path(), {
        "task": task, "seed": seed, "init": "pretrained", "scores": scores, "recipe": recipe.to_dict(),
        "source": "glue-dir:/x", "train_examples": 10, "elapsed_s": 1.0, "device": "cpu"})


def test_summary_medians_spreads_and_the_full_average(tmp_path):
    for seed, value in enumerate((0.5, 0.7, 0.6)):
        fake_result(tmp_path, "mrpc", seed, {"f1": value, "accuracy": value - 0.1})
    summary = write_summary(tmp_path)
    f1 = summary["tasks"]["mrpc"]["metrics"]["f1"]
    assert (f1["median"], f1["min"], f1["max"]) == pytest.approx((60, 50, 70))
    assert summary["average"]["value"] == pytest.approx(60)  # the target, F1, not accuracy
    assert "mrpc only (1 of 8" in summary["average"]["label"]
    assert "mrpc   f1*" in render(summary) and "average over mrpc only" in render(summary)

    # All eight tasks: MNLI's matched and mismatched count as two of the nine numbers.
    tasks = {name: {"metrics": {target: {"median": 80.0} for target in glue_targets(name)},
                    "targets": glue_targets(name)} for name in TASKS}
    tasks["mnli"]["metrics"]["mismatched_accuracy"]["median"] = 71.0
    full = average(tasks)
    assert full["complete"] and full["label"] == "GLUE average (8 tasks)"
    assert full["value"] == pytest.approx((8 * 80 + 71) / 9)


def glue_targets(name: str) -> list[str]:
    from crammit.eval.finetune import target_names

    return target_names(TASKS[name])


def test_results_of_another_recipe_are_refused_not_mixed(tmp_path, finished_run):
    fake_result(finished_run, "rte", 0, {"accuracy": 0.5}, recipe=GlueRecipe(lr=1e-4))
    with pytest.raises(CrammitError, match="another recipe or data"):
        evaluate_glue([finished_run], [TASKS["rte"]], [0], RECIPE, Path("/x"), Placement(0, 1))


def test_a_run_without_a_final_model_is_refused(tmp_path):
    with pytest.raises(CrammitError, match="holds no final model"):
        evaluate_glue([tmp_path], [TASKS["rte"]], [0], RECIPE, None, Placement(0, 1))
