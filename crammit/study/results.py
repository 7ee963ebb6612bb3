"""The study directory: its files, each trial's state, and the tables built from the
trials' run directories.

The run directories are the record: `trials.parquet` and `curves.parquet` are rebuilt
from them whenever a trial ends, so a study killed at any moment loses no finished trial
and can never list one twice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crammit.config import Device
from crammit.data.layout import MANIFEST, read_manifest
from crammit.errors import CrammitError
from crammit.eval.glue_results import trial_columns
from crammit.io import atomic_path, read_json, write_json
from crammit.model.flops import non_embedding_parameter_count, parameter_count
from crammit.study.spec import StudySpec, Trial, TrialStatus, write_study_file
from crammit.train import rundir
from crammit.versions import describe

STUDY_FILE = "study.toml"
TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"
FIT_FILE = "fit.json"
PLOTS_DIR = "plots"
TRIALS_DIR = "trials"
DATA_DIR = "data"
ERROR_FILE = "error.txt"  # in a trial's run directory: why its last attempt failed
CALIBRATION_FILE = "calibration.json"  # CPU speeds a plan timed, by `calibration_key`: reruns reuse them


def read_calibration(study_dir: Path) -> dict[str, float]:
    path = study_dir / CALIBRATION_FILE
    return read_json(path) if path.is_file() else {}


def save_calibration(study_dir: Path, rates: dict[str, float]) -> None:
    write_json(study_dir / CALIBRATION_FILE, {**read_calibration(study_dir), **rates})


def trial_dir(study_dir: Path, trial: Trial) -> Path:
    return study_dir / TRIALS_DIR / trial.name


def trial_status(run_dir: Path) -> TrialStatus:
    if (run_dir / rundir.FINAL_FILE).is_file():
        return TrialStatus.OK
    if (run_dir / ERROR_FILE).is_file():
        return TrialStatus.FAILED
    if rundir.is_run_dir(run_dir):
        return TrialStatus.INTERRUPTED
    return TrialStatus.PENDING


def continue_command(study_dir: Path) -> str:
    """The command that continues a stopped study where it stopped."""
    return f"crammit study run {study_dir / STUDY_FILE} --out {study_dir}"


def save_spec(study_dir: Path, spec: StudySpec) -> None:
    write_study_file(study_dir / STUDY_FILE, spec)


def trials_table(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """One row per trial of the spec, finished or not (see the README for the columns)."""
    return pd.DataFrame([_trial_row(spec, trial, study_dir) for trial in spec.trials()])


def _trial_row(spec: StudySpec, trial: Trial, study_dir: Path) -> dict:
    run_dir = trial_dir(study_dir, trial)
    status = trial_status(run_dir)
    row = {"trial": trial.name, "setting": trial.setting.name, "size": trial.size,
           "arch": trial.setting.arch, "recipe": trial.setting.recipe_label(), "gpus": trial.setting.gpus,
           "workers": trial.setting.workers_per_trial,
           "device": (Device.CUDA if trial.setting.gpus else Device.CPU).value,
           "budget": float(trial.budget), "budget_unit": trial.unit.value, "seed": trial.seed, "params": None,
           "non_embedding_params": None, "tokens": None, "flops": None, "elapsed_s": None,
           "gpu_hours": None, "device_hours": None, "eval_loss": None, "initial_eval_loss": None,
           "unique_tokens": None, "epochs": None, "status": status.value, "error": None,
           "versions": _versions(run_dir), "run_dir": str(run_dir.relative_to(study_dir))}
    if rundir.is_run_dir(run_dir):
        config = rundir.load_config(run_dir)
        row.update(params=parameter_count(config.model),
                   non_embedding_params=non_embedding_parameter_count(config.model),
                   unique_tokens=_unique_tokens(config.data))
    if status is TrialStatus.OK:
        final = rundir.read_final(run_dir)
        hours = final.elapsed_s / 3600
        row.update(tokens=final.tokens, flops=final.flops, elapsed_s=final.elapsed_s,
                   gpu_hours=hours * trial.setting.gpus, device_hours=hours * trial.setting.workers_per_trial,
                   eval_loss=final.eval_loss, initial_eval_loss=final.initial_eval_loss,
                   epochs=final.tokens / row["unique_tokens"] if row["unique_tokens"] else None)
    elif status is TrialStatus.FAILED:
        row["error"] = (run_dir / ERROR_FILE).read_text().strip()
    if spec.glue.tasks:
        row.update(trial_columns(run_dir, spec.glue.task_list()))
    return row


def _versions(run_dir: Path) -> str | None:
    """The software each start of the trial's training ran with ("; " between different ones)."""
    if not (run_dir / rundir.ATTEMPTS_FILE).is_file():
        return None
    attempts = rundir.read_attempts(run_dir)
    ran = [describe(attempt["versions"]) for attempt in attempts if "versions" in attempt]
    return "; ".join(dict.fromkeys(ran)) or None


def mixed_versions(trials: pd.DataFrame) -> str | None:
    """A warning where the study's trials ran with different software, else None."""
    ran = trials.dropna(subset=["versions"]).groupby("versions")["trial"].apply(list)
    if len(ran) < 2:
        return None
    groups = "; ".join(f"{', '.join(names)}: {versions}" for versions, names in ran.items())
    return f"warning: the trials ran with {len(ran)} different software versions ({groups})"


def _unique_tokens(data: str) -> int | None:
    """The training tokens of a trial's prepared corpus; None where it is not at hand."""
    manifest = Path(data) / MANIFEST
    return read_manifest(Path(data))["train_tokens"] if data and manifest.is_file() else None


def curves_table(trials: pd.DataFrame, study_dir: Path) -> pd.DataFrame:
    """Every trial's step metrics, with the trial's identity in front."""
    identity = ["trial", "setting", "size", "budget", "budget_unit"]
    frames = []
    for row in trials.itertuples():
        metrics = study_dir / row.run_dir / rundir.METRICS_FILE
        if metrics.is_file():
            frame = pd.read_parquet(metrics)
            frames.append(frame.assign(**{name: getattr(row, name) for name in identity}))
    if not frames:
        return pd.DataFrame(columns=identity)
    curves = pd.concat(frames, ignore_index=True)
    return curves[identity + [c for c in curves.columns if c not in identity]]


def write_tables(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """Rebuild trials.parquet and curves.parquet from the run directories; returns the trials."""
    trials = trials_table(spec, study_dir)
    for name, table in ((TRIALS_FILE, trials), (CURVES_FILE, curves_table(trials, study_dir))):
        with atomic_path(study_dir / name) as tmp:
            table.to_parquet(tmp, index=False)
    return trials


def read_tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not (study_dir / TRIALS_FILE).is_file():
        raise CrammitError(f"{study_dir} holds no {TRIALS_FILE}; pass a study directory")
    curves = study_dir / CURVES_FILE
    return pd.read_parquet(study_dir / TRIALS_FILE), (pd.read_parquet(curves) if curves.is_file() else
                                                      pd.DataFrame())

