"""Experiment tracking: MLflow, TensorBoard and Weights & Biases records of training runs,
studies and GLUE evaluations, written beside crammit's own files (which stay what crammit
reads back).

- A training run is logged by its rank-0 worker, as Ray Train's guide recommends
  (`run_tracker`): its parameters, every step's and evaluation's metrics, its final results.
  Its MLflow run and W&B id are kept in `RUN_DIR/tracking.json`, so a resumed run continues
  them and a GLUE evaluation adds its scores to the same MLflow run.
- A study is an MLflow experiment named after its directory, with a parent run that holds the
  fit and the figures (`StudyTracker`). Tune's logger callbacks log each trial on the driver:
  an MLflow child run with the trial's parameters, its reports and final metrics, and a W&B
  run in the study's group. Each trial's rank 0 writes its TensorBoard event files into its
  run directory, as a training run does.
- GLUE scores (`log_glue`) go onto the run's MLflow run, into event files in its GLUE
  directory, and into a W&B run of their own.

MLflow's local store is SQLite, `DIR/mlruns/mlflow.db`, with artifacts in `DIR/mlruns/artifacts`:
MLflow has retired its plain-file store (it refuses one unless told otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crammit.config import Tracker, Tracking, TrainConfig
from crammit.errors import CrammitError
from crammit.io import read_json, write_json

MLFLOW_DIR = "mlruns"
MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
TRACKING_FILE = "tracking.json"  # in a run or study directory: the MLflow run and W&B id it logs to
RUNS_EXPERIMENT = "crammit"  # the MLflow experiment of runs outside a study
STUDY_RUN = "study"  # the name of a study's parent run
WANDB_PROJECT = "crammit"
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
EXTRA = "crammit[track]"
# What each tracker imports. The MLflow store is SQLite, which MLflow reaches through SQLAlchemy and Alembic.
MODULES = {Tracker.MLFLOW: ("mlflow", "sqlalchemy", "alembic"), Tracker.TENSORBOARD: ("tensorboardX",),
           Tracker.WANDB: ("wandb",)}


def check_installed(tracking: Tracking) -> None:
    """Fail before any work when a tracker asked for is not installed."""
    for tracker in tracking.trackers:
        missing = [module for module in MODULES[tracker] if importlib.util.find_spec(module) is None]
        if missing:
            raise CrammitError(f"--tracker {tracker.value} needs {', '.join(missing)}, which is not "
                               f'installed; pip install "{EXTRA}"')


def run_params(config: TrainConfig) -> dict[str, Any]:
    """What a training run is, as trackers show it beside its metrics."""
    recipe = config.recipe
    return {"size": config.size_name, "arch": config.model.arch.value, "recipe": recipe.name,
            "budget": config.budget.describe(), "seed": recipe.seed, "device": config.device.value,
            "workers": config.num_workers, "batch_size": recipe.batch_size,
            "micro_batch_size": recipe.micro_batch_size, "peak_lr": recipe.peak_lr, "run_dir": config.run_dir}


def glue_scores(summary: dict, prefix: str = "glue") -> dict[str, float]:
    """A GLUE summary (glue.json) as metrics: each task's median score per metric
    (`glue_rte_accuracy`, the names of a study's trials table) and the average."""
    scores = {f"{prefix}_{task}_{metric}": spread["median"]
              for task, entry in summary["tasks"].items() for metric, spread in entry["metrics"].items()}
    if summary["average"]["value"] is not None:
        scores[f"{prefix}_average"] = summary["average"]["value"]
    return scores


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries a tracker takes as metrics: numbers, not flags or missing values (a CPU's MFU)."""
    return {key: float(value) for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def _wandb_mode(tracking: Tracking) -> dict[str, str]:
    return {"mode": tracking.wandb_mode} if tracking.wandb_mode else {}


def _record(directory: Path) -> dict:
    path = directory / TRACKING_FILE
    return read_json(path) if path.is_file() else {}


def _add_record(directory: Path, **entries: dict) -> None:
    write_json(directory / TRACKING_FILE, {**_record(directory), **entries})


@dataclass(frozen=True)
class MlflowStore:
    """An MLflow tracking store, and where its new experiments keep their artifacts (None:
    where the store's server decides)."""

    uri: str
    artifacts: Path | None = None

    @classmethod
    def of(cls, tracking: Tracking, directory: Path) -> MlflowStore:
        """The store asked for, else the local one in `directory`."""
        if tracking.mlflow_uri:
            return cls(tracking.mlflow_uri)
        store = directory.resolve() / MLFLOW_DIR
        store.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{store / MLFLOW_DB}", store / ARTIFACTS_DIR)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def experiment(self, client, name: str) -> str:
        """The experiment's id, created if new (its artifacts beside a local store, not in the
        working directory MLflow would choose)."""
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.artifacts / name).as_uri() if self.artifacts else None
        return client.create_experiment(name, artifact_location=location)


def _log_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # One batch a step: a store write per metric would cost a step's time on a remote server.
    client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


class _MlflowRun:
    """A training run's MLflow run: the one its tracking.json names (a resumed run's), else a
    new one in the `crammit` experiment."""

    def __init__(self, run_dir: Path, tracking: Tracking, params: Mapping[str, Any]) -> None:
        recorded = _record(run_dir).get("mlflow")
        if recorded:
            self.client, self.run_id = MlflowStore(recorded["uri"]).client(), recorded["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        store = MlflowStore.of(tracking, run_dir)
        self.client = store.client()
        run = self.client.create_run(store.experiment(self.client, RUNS_EXPERIMENT), run_name=run_dir.name)
        self.run_id = run.info.run_id
        _log_params(self.client, self.run_id, params)
        _add_record(run_dir, mlflow={"uri": store.uri, "run_id": self.run_id})

    def log(self, values: dict[str, float], step: int) -> None:
        _log_metrics(self.client, self.run_id, values, step)

    def finish(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class _TensorBoardRun:
    """Event files in the run directory: `tensorboard --logdir` on a folder of runs (runs/,
    a study's trials/) shows them side by side."""

    def __init__(self, run_dir: Path, tracking: Tracking, params: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"final/{key}", value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _WandbRun:
    """A W&B run, its files in the run directory; a resumed run continues it by its id."""

    def __init__(self, run_dir: Path, tracking: Tracking, params: Mapping[str, Any]) -> None:
        import wandb

        recorded = _record(run_dir).get("wandb") or {"id": uuid.uuid4().hex[:12]}
        self.run = wandb.init(project=WANDB_PROJECT, name=run_dir.name, id=recorded["id"], resume="allow",
                              dir=str(run_dir), config=dict(params), **_wandb_mode(tracking))
        _add_record(run_dir, wandb=recorded)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


_RUN_LOGGERS = {Tracker.MLFLOW: _MlflowRun, Tracker.TENSORBOARD: _TensorBoardRun, Tracker.WANDB: _WandbRun}


class RunTracker:
    """A training run's records in each tracker asked for. Only rank 0 holds any: the other
    ranks' calls do nothing, so the loop logs each step once."""

    def __init__(self, loggers: list) -> None:
        self._loggers = loggers

    def log(self, metrics: Any, step: int) -> None:
        """Metrics at `step` (a mapping, or a metrics.parquet row, whose `step` is no metric)."""
        if not self._loggers:  # every step calls this; untracked runs pay nothing
            return
        if dataclasses.is_dataclass(metrics):
            metrics = dataclasses.asdict(metrics)
        values = _numbers({key: value for key, value in metrics.items() if key != "step"})
        for logger in self._loggers:
            logger.log(values, step)

    def finish(self, results: Mapping[str, Any], step: int) -> None:
        """The run's final results (final.json)."""
        values = _numbers(results)
        for logger in self._loggers:
            logger.finish(values, step)

    def close(self, failed: bool) -> None:
        for logger in self._loggers:
            logger.close(failed)


@contextmanager
def run_tracker(config: TrainConfig, rank: int) -> Iterator[RunTracker]:
    """The run's tracker on rank 0, a silent one on the other ranks; closed as failed when
    training raises."""
    params = run_params(config)
    loggers = [] if rank else [_RUN_LOGGERS[tracker](Path(config.run_dir), config.launch.tracking, params)
                               for tracker in config.launch.tracking.trackers]
    tracker = RunTracker(loggers)
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close(failed=False)


class StudyTracker:
    """A study's records. MLflow: an experiment named after the study's directory, whose parent
    run (kept in the study's tracking.json) holds the fit and figures, and one child run per
    trial. Tune's logger callbacks write the trials' MLflow and W&B runs on the driver."""

    def __init__(self, tracking: Tracking, study_dir: Path, params: Mapping[str, Any]) -> None:
        self.tracking, self.study_dir = tracking, study_dir.resolve()
        self.name = self.study_dir.name
        self.store: MlflowStore | None = None
        if Tracker.MLFLOW not in tracking.trackers:
            return
        recorded = _record(self.study_dir).get("mlflow")
        self.store = MlflowStore(recorded["uri"]) if recorded else MlflowStore.of(tracking, self.study_dir)
        client = self.store.client()
        self.experiment = self.store.experiment(client, self.name)
        if recorded:  # a study run again: its parent run goes on
            self.parent = recorded["run_id"]
            client.update_run(self.parent, status="RUNNING")
            return
        self.parent = client.create_run(self.experiment, run_name=STUDY_RUN).info.run_id
        _log_params(client, self.parent, params)
        _add_record(self.study_dir, mlflow={"uri": self.store.uri, "run_id": self.parent})

    def trial_tracking(self) -> Tracking:
        """What each trial's rank 0 logs itself: TensorBoard, whose event files belong in the
        trial's run directory (Tune's own TBXLoggerCallback writes Tune's trial directory)."""
        return replace(self.tracking, trackers=tuple(tracker for tracker in self.tracking.trackers
                                                     if tracker is Tracker.TENSORBOARD))

    def callbacks(self) -> list:
        """Tune's logger callbacks for the trials: each logs a trial's config (its parameters),
        every report and its final result, from the driver."""
        callbacks = []
        if self.store is not None:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=self.store.uri, experiment_name=self.name,
                                                  tags={PARENT_TAG: self.parent}))
        if Tracker.WANDB in self.tracking.trackers:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=WANDB_PROJECT, group=self.name,
                                                 dir=str(self.study_dir), **_wandb_mode(self.tracking)))
        return callbacks

    def record_trials(self, trials: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> None:
        """Note each finished trial's MLflow run (by name: `trials` maps it to the trial's run
        directory and parameters) in the trial's tracking.json, where a GLUE evaluation finds
        it. A trial that finished before the study was tracked gets a run with its parameters."""
        if self.store is None:
            return
        client = self.store.client()
        for name, (run_dir, params) in trials.items():
            found = client.search_runs(
                [self.experiment], max_results=1, order_by=["attributes.start_time DESC"],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent}' and attributes.run_name = '{name}'")
            if found:
                run_id = found[0].info.run_id
            else:
                run = client.create_run(self.experiment, run_name=name, tags={PARENT_TAG: self.parent})
                run_id = run.info.run_id
                _log_params(client, run_id, params)
                client.set_terminated(run_id)
            _add_record(run_dir, mlflow={"uri": self.store.uri, "run_id": run_id})

    def finish(self, artifacts: list[Path]) -> None:
        """The study's files (fit.json, the plots directory) as artifacts of the parent run, which ends."""
        if self.store is None:
            return
        client = self.store.client()
        for path in artifacts:
            if path.is_dir():
                client.log_artifacts(self.parent, str(path), artifact_path=path.name)
            elif path.is_file():
                client.log_artifact(self.parent, str(path))
        client.set_terminated(self.parent)


def log_glue(tracking: Tracking, run_dir: Path, directory: Path, summary: dict) -> None:
    """A run's GLUE scores (`glue_scores`, named after its GLUE directory: `glue_*`, or
    `glue_from_scratch_*`): on the run's MLflow run (the one its tracking.json names, else a new
    one in the `crammit` experiment), as TensorBoard scalars in the GLUE directory, and as a W&B
    run of their own."""
    scores = glue_scores(summary, directory.name.replace("-", "_"))
    if Tracker.MLFLOW in tracking.trackers:
        recorded = _record(run_dir).get("mlflow")
        if recorded:
            client, run_id = MlflowStore(recorded["uri"]).client(), recorded["run_id"]
        else:
            store = MlflowStore.of(tracking, run_dir)
            client = store.client()
            run_id = client.create_run(store.experiment(client, RUNS_EXPERIMENT), run_name=run_dir.name
                                       ).info.run_id
            client.set_terminated(run_id)
            _add_record(run_dir, mlflow={"uri": store.uri, "run_id": run_id})
        _log_metrics(client, run_id, scores, step=0)
    if Tracker.TENSORBOARD in tracking.trackers:
        from tensorboardX import SummaryWriter

        with SummaryWriter(logdir=str(directory)) as writer:
            for key, value in scores.items():
                writer.add_scalar(key, value, 0)
    if Tracker.WANDB in tracking.trackers:
        import wandb

        run = wandb.init(project=WANDB_PROJECT, name=f"{run_dir.name}-{directory.name}", job_type="glue",
                         dir=str(directory), config={"run_dir": str(run_dir), "init": summary["init"]},
                         **_wandb_mode(tracking))
        run.log(scores)
        run.finish()
