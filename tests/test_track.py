"""Experiment tracking read back as each tracker's own tools read it: MLflow's client,
TensorBoard's event reader, and the records of offline W&B runs."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
import ray

from crammit.config import Tracker, Tracking
from crammit.errors import CrammitError
from crammit.track import (
    MLFLOW_DB,
    MLFLOW_DIR,
    PARENT_TAG,
    RUNS_EXPERIMENT,
    STUDY_RUN,
    TRACKING_FILE,
    StudyTracker,
    check_installed,
    log_glue,
)
from crammit.train import rundir
from tests.helpers import write_glue_dir

ALL = Tracking(tuple(Tracker), wandb_mode="offline")
STEP_TOKENS = 16 * 128


def mlflow_client(directory: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{directory.resolve() / MLFLOW_DIR / MLFLOW_DB}")


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in `directory`, by tag, as TensorBoard loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def wandb_runs(directory: Path) -> list[dict]:
    """Each offline W&B run under `directory/wandb`: its name, group, config, history rows
    and summary, read from its .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7  # the log's block size; each record's and the file's header size
    runs = []
    for path in sorted((directory / "wandb").glob("offline-run-*/run-*.wandb")):
        raw = path.read_bytes()
        assert raw[:4] == b":W&B"
        run = {"history": [], "summary": {}}
        position, pieces = header, b""
        while position + header <= len(raw):
            if block - position % block < header:  # a block's tail too short for a header is padding
                position += block - position % block
                continue
            _, length, kind = struct.unpack("<IHB", raw[position:position + header])
            pieces += raw[position + header:position + header + length]
            position += header + length
            if kind not in (1, 4):  # a record's first or middle piece: more follow
                continue
            record = wandb_internal_pb2.Record.FromString(pieces)
            pieces = b""
            if record.HasField("run"):
                run.update(name=record.run.display_name, group=record.run.run_group, config={
                    item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif record.HasField("history"):
                run["history"].append({item.nested_key[0] if item.nested_key else item.key:
                                       json.loads(item.value_json) for item in record.history.item})
            elif record.HasField("summary"):
                run["summary"].update({item.nested_key[0] if item.nested_key else item.key:
                                       json.loads(item.value_json) for item in record.summary.update})
        runs.append(run)
    return runs


def test_a_tracker_not_installed_is_one_line_naming_the_extra(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else found(name))
    check_installed(Tracking((Tracker.MLFLOW, Tracker.TENSORBOARD)))
    with pytest.raises(CrammitError, match=r'^--tracker wandb needs wandb, which is not installed; '
                                           r'pip install "crammit\[track\]"$'):
        check_installed(Tracking((Tracker.TENSORBOARD, Tracker.WANDB)))


@pytest.mark.slow
def test_a_run_logs_every_step_from_rank_0_and_its_glue_scores_join_its_mlflow_run(
        tmp_path, corpus_file, toy_data, toy_ingest, monkeypatch):
    from crammit.train import rundir
    from crammit.train.run import launch, prepare_run
    from tests.helpers import tiny_train_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    config = prepare_run(tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data), tracking=ALL))
    run_dir = Path(config.run_dir)
    final = launch(config, in_process=True, data=toy_ingest)
    steps = rundir.read_metrics(run_dir)["loss"].tolist()

    client = mlflow_client(run_dir)
    run = client.get_run(json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == RUNS_EXPERIMENT
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["size"] == "tiny" and run.data.params["budget"] == f"{10 * STEP_TOKENS} tokens"
    assert [metric.value for metric in client.get_metric_history(run.info.run_id, "loss")] == steps
    assert run.data.metrics["eval_loss"] == final.eval_loss and run.data.metrics["steps"] == final.steps

    board = scalars(run_dir)
    assert [value for _, value in board["loss"]] == pytest.approx(steps)
    assert board["final/eval_loss"] == [(final.steps, pytest.approx(final.eval_loss))]

    (logged,) = wandb_runs(run_dir)
    assert logged["name"] == run_dir.name and logged["config"]["size"] == "tiny"
    assert [row["loss"] for row in logged["history"] if "loss" in row] == pytest.approx(steps)
    assert logged["summary"]["eval_loss"] == pytest.approx(final.eval_loss)

    # A GLUE evaluation afterwards: its scores on the same MLflow run, beside its files and in W&B.
    summary = {"init": "pretrained", "tasks": {"rte": {"metrics": {"accuracy": {"median": 62.5}}}},
               "average": {"value": 62.5}}
    log_glue(ALL, run_dir, run_dir / "glue", summary)
    assert client.get_run(run.info.run_id).data.metrics["glue_rte_accuracy"] == 62.5
    assert scalars(run_dir / "glue")["glue_average"] == [(0, 62.5)]
    assert wandb_runs(run_dir / "glue")[0]["summary"]["glue_rte_accuracy"] == 62.5


@pytest.mark.slow
def test_the_fit_and_figures_are_artifacts_of_the_study_run_which_a_rerun_continues(tmp_path):
    study = tmp_path / "study"
    (study / "plots").mkdir(parents=True)
    (study / "plots" / "loss_vs_compute.png").write_bytes(b"png")
    (study / "fit.json").write_text("{}")
    tracking = Tracking((Tracker.MLFLOW,))
    first = StudyTracker(tracking, study, {"study": "tiny"})
    first.finish([study / "fit.json", study / "plots", study / "missing.json"])
    again = StudyTracker(tracking, study, {"study": "tiny"})
    assert again.parent == first.parent

    client = mlflow_client(study)
    run = client.get_run(first.parent)
    assert client.get_experiment(run.info.experiment_id).name == "study" and run.info.run_name == STUDY_RUN
    assert run.data.params == {"study": "tiny"}
    assert sorted(item.path for item in client.list_artifacts(first.parent)) == ["fit.json", "plots"]
    figures = client.list_artifacts(first.parent, "plots")
    assert [item.path for item in figures] == ["plots/loss_vs_compute.png"]


@pytest.mark.slow
def test_a_two_trial_study_and_its_glue_scores_in_mlflow_tensorboard_and_wandb(
        tmp_path, toy_data, cache_dir, monkeypatch):
    from crammit.cluster import cluster_resources
    from crammit.study.spec import Setting, StudyData, StudyGlue, StudySpec, StudyUnit
    from crammit.study.sweep import run_study

    monkeypatch.setenv("WANDB_MODE", "offline")  # Tune's W&B callback asks for an API key otherwise
    budgets = (10 * STEP_TOKENS, 20 * STEP_TOKENS)
    setting = Setting("tiny", ("tiny",), budgets, gpus=0, overrides={"batch_size": 16, "micro_batch_size": 8})
    spec = StudySpec("tracked", (setting,), unit=StudyUnit.TOKENS, data=StudyData(data=str(toy_data)),
                     glue=StudyGlue(tasks=("rte",), glue_dir=str(write_glue_dir(tmp_path / "glue"))),
                     max_eval_sequences=32)
    study = tmp_path / "study"
    run_study(spec, study, cluster_resources(ray.get_runtime_context().gcs_address), cache_dir,
              allow_ordered_data=True, tracking=ALL)
    trials = {trial.name: study / "trials" / trial.name for trial in spec.trials()}

    # MLflow: the study's experiment, its parent run with the figures, a child run per trial.
    client = mlflow_client(study)
    experiment = client.get_experiment_by_name(study.name).experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(runs) == {STUDY_RUN, *trials}
    parent = runs[STUDY_RUN]
    assert parent.info.status == "FINISHED" and parent.data.params["study"] == "tracked"
    figures = client.list_artifacts(parent.info.run_id, "plots")
    assert "training_curves.png" in {Path(item.path).name for item in figures}
    for trial, budget in zip(trials, budgets, strict=True):
        run = runs[trial]
        assert run.data.tags[PARENT_TAG] == parent.info.run_id and run.info.status == "FINISHED"
        expected = {"setting": "tiny", "size": "tiny", "arch": "crammed", "recipe": "crammed",
                    "unit": "tokens", "seed": "0"}
        assert {key: run.data.params[key] for key in expected} == expected
        assert float(run.data.params["budget"]) == budget
        final = rundir.read_final(trials[trial])
        assert run.data.metrics["eval_loss"] == pytest.approx(final.eval_loss)
        assert client.get_metric_history(run.info.run_id, "tokens")[-1].value == final.tokens
        assert 0 <= run.data.metrics["glue_rte_accuracy"] <= 100  # the GLUE score on the trial's run

    # TensorBoard: each trial's steps in its run directory, its GLUE scores in its GLUE directory.
    for run_dir in trials.values():
        final = rundir.read_final(run_dir)
        assert [step for step, _ in scalars(run_dir)["loss"]] == list(range(1, final.steps + 1))
        assert 0 <= scalars(run_dir / "glue")["glue_rte_accuracy"][0][1] <= 100

    # W&B: one offline run per trial in the study's group, and one of each trial's GLUE scores.
    logged = {run["name"]: run for run in wandb_runs(study)}
    assert set(logged) == set(trials)
    for trial, run in logged.items():
        assert run["group"] == study.name and run["config"]["size"] == "tiny"
        assert run["summary"]["eval_loss"] == pytest.approx(runs[trial].data.metrics["eval_loss"])
        (glue,) = wandb_runs(trials[trial] / "glue")
        assert glue["name"] == f"{trial}-glue" and 0 <= glue["summary"]["glue_rte_accuracy"] <= 100
