"""GLUE evaluation: the grid on Ray Tune, resuming, and the failures it records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from crammit.config import GlueRecipe
from crammit.errors import CrammitError, Interrupted
from crammit.eval import glue, glue_results
from crammit.eval.glue import Placement, evaluate_glue
from crammit.eval.glue_data import TASKS
from crammit.eval.glue_results import FinetuneJob, Init
from crammit.train import rundir
from tests.helpers import GLUE_WORDS, write_finished_run, write_glue_dir, write_glue_result

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
    assert evaluation.failed == {}
    summary = evaluation.summaries[finished_run.resolve()]
    assert list(summary["tasks"]) == ["sst2", "rte"]  # GLUE's order
    for entry in summary["tasks"].values():
        values = entry["metrics"]["accuracy"]["values"]
        assert entry["seeds"] == [0, 1] and len(values) == 2 and all(0 <= v <= 100 for v in values)
        assert entry["metrics"]["accuracy"]["median"] == pytest.approx(sum(values) / 2)
        assert entry["train_examples"] == 40 and entry["source"].startswith("glue-dir:")
    assert summary["average"]["complete"] is False and "sst2, rte only" in summary["average"]["label"]
    table = pd.read_parquet(finished_run / "glue" / glue_results.RESULTS_FILE)
    assert len(table) == 4 and set(table["device"]) == {"cpu"}

    # Run again: every result is on disk, so nothing is fine-tuned and nothing changes.
    seeds = finished_run / "glue" / glue_results.SEEDS_DIR
    written = {path: path.stat().st_mtime_ns for path in seeds.iterdir()}
    monkeypatch.setattr(glue, "_tune", lambda *args: pytest.fail("a finished fine-tune ran again"))
    again = evaluate_glue([finished_run], tasks, [0, 1], RECIPE, glue_data, placement)
    assert again.summaries[finished_run.resolve()]["tasks"] == summary["tasks"]
    assert {path: path.stat().st_mtime_ns for path in written} == written


@pytest.mark.slow
def test_a_failed_fine_tune_records_its_reason_and_the_others_go_on(tmp_path, finished_run, ray_session):
    broken = write_finished_run(tmp_path / "broken", [" ".join(GLUE_WORDS)] * 20)
    (broken / rundir.MODEL_FILE).write_bytes(b"not safetensors")
    glue_data, said = write_glue_dir(tmp_path / "glue"), []
    evaluation = evaluate_glue([finished_run, broken], [TASKS["rte"]], [0], RECIPE, glue_data,
                               Placement(gpus=0, workers=2), echo=said.append)
    assert list(evaluation.failed) == ["broken-rte-seed0"]
    reason = evaluation.failed["broken-rte-seed0"]
    assert reason.startswith("SafetensorError") and "\n" not in reason, reason
    job = FinetuneJob(str(broken.resolve()), "rte", 0, Init.PRETRAINED)
    assert job.error_path().read_text() == reason + "\n" and not job.result_path().exists()
    assert f"GLUE fine-tune broken-rte-seed0 failed: {reason}" in said
    assert list(evaluation.summaries[finished_run.resolve()]["tasks"]) == ["rte"]


def test_tune_s_errors_are_each_fine_tune_s_reason(tmp_path):
    jobs = {job.name: job for job in (FinetuneJob(str(tmp_path / "run"), "rte", seed, Init.PRETRAINED)
                                      for seed in (0, 1))}
    wrapped = RuntimeError("ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\nTraceback ...")
    wrapped.cause = ValueError("bad weights\nmore detail")  # as Ray's RayTaskError carries the original
    grid = [SimpleNamespace(path=str(tmp_path / "tune" / "run-rte-seed0"), error=wrapped),
            SimpleNamespace(path=str(tmp_path / "tune" / "run-rte-seed1"), error=None)]
    assert glue.record_failures(grid, jobs) == {"run-rte-seed0": "ValueError: bad weights"}
    assert jobs["run-rte-seed0"].error_path().read_text() == "ValueError: bad weights\n"
    assert not jobs["run-rte-seed1"].error_path().exists()


def test_fine_tunes_tune_stopped_make_the_evaluation_interrupted_not_failed(tmp_path, finished_run,
                                                                            monkeypatch):
    """Ctrl-C stops Tune, which returns: fine-tunes without scores or an error were stopped."""
    write_glue_result(finished_run, "rte", 0, {"accuracy": 0.5}, recipe=RECIPE)  # from glue-dir /x
    for name in ("task_data", "start_ray"):
        monkeypatch.setattr(glue, name, lambda *args: None)
    monkeypatch.setattr(glue, "_tune", lambda *args: {})
    with pytest.raises(Interrupted, match="^1 of 3 GLUE fine-tunes finished$"):
        evaluate_glue([finished_run], [TASKS["rte"]], [0, 1, 2], RECIPE, Path("/x"), Placement(0, 1))


def test_results_of_another_recipe_are_refused_not_mixed(tmp_path, finished_run):
    write_glue_result(finished_run, "rte", 0, {"accuracy": 0.5}, recipe=GlueRecipe(lr=1e-4))
    with pytest.raises(CrammitError, match="another recipe or data"):
        evaluate_glue([finished_run], [TASKS["rte"]], [0], RECIPE, Path("/x"), Placement(0, 1))


def test_a_run_without_a_final_model_is_refused(tmp_path):
    with pytest.raises(CrammitError, match="holds no final model"):
        evaluate_glue([tmp_path], [TASKS["rte"]], [0], RECIPE, None, Placement(0, 1))
