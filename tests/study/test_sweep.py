"""Studies end to end on Ray Tune (2 CPUs): every trial a crammit run, resumable after a kill."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from crammit.study import results
from crammit.train import rundir
from crammit.train.checkpoint import latest_tag
from tests.helpers import write_glue_dir

STEP_TOKENS = 16 * 128


def study_file(tmp_path: Path) -> Path:
    """Two token budgets of the tiny model, checkpointing every second or so, and a setting
    whose one trial fails: its micro-batch exceeds the training set. Finished trials are
    fine-tuned on a small RTE."""
    path = tmp_path / "study.toml"
    path.write_text(f"""
name = "killed"
unit = "tokens"
checkpoint_minutes = 0.02
max_eval_sequences = 32
[glue]
tasks = ["rte"]
glue_dir = "{write_glue_dir(tmp_path / 'glue')}"
[[settings]]
name = "tiny"
sizes = ["tiny"]
budgets = [{", ".join(str(steps * STEP_TOKENS) for steps in (20, 30))}]
gpus = 0
[settings.overrides]
batch_size = 16
micro_batch_size = 8
[[settings]]
name = "broken"
sizes = ["tiny"]
budgets = [{10 * STEP_TOKENS}]
gpus = 0
[settings.overrides]
batch_size = 65536
micro_batch_size = 65536
""")
    return path


def study(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crammit", "study", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupted_trial(out: Path) -> Path | None:
    """A trial with a checkpoint that has not finished: the moment to kill the study."""
    for run_dir in sorted((out / results.TRIALS_DIR).glob("tiny-*")):
        if latest_tag(run_dir) is not None and not (run_dir / rundir.FINAL_FILE).exists():
            return run_dir
    return None


@pytest.mark.slow
def test_a_killed_study_resumes_and_completes_without_losing_or_repeating_trials_then_glue(
        tmp_path, toy_data, ray_session):
    out, address = tmp_path / "study", ray.get_runtime_context().gcs_address
    arguments = [str(study_file(tmp_path)), "--out", str(out), "--data", str(toy_data), "--address", address]

    first = study(*arguments)
    deadline, victim = time.monotonic() + 240, None
    while victim is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        victim = interrupted_trial(out)
    first.kill()  # SIGKILL: the driver, and with it Tune and its trials, dies mid-trial
    first.wait()
    assert victim is not None, first.stdout.read()[-3000:]
    checkpoint_step = int(latest_tag(victim).split("-")[1])

    second = study(*arguments)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]

    trials = pd.read_parquet(out / results.TRIALS_FILE)
    assert sorted(trials["trial"]) == sorted(set(trials["trial"])) and len(trials) == 3
    done = trials[trials["setting"] == "tiny"]
    assert (done["status"] == "ok").all() and (done["eval_loss"] < done["initial_eval_loss"]).all()
    broken = trials[trials["setting"] == "broken"].iloc[0]
    assert broken["status"] == "failed" and "fewer than one micro-batch" in broken["error"]

    final = json.loads((victim / rundir.FINAL_FILE).read_text())
    assert final["resumed_at_step"] >= checkpoint_step > 0  # from its checkpoint, not from step 0
    steps = rundir.read_metrics(victim)["step"].tolist()
    assert steps == list(range(1, final["steps"] + 1))  # each step once, none repeated or lost

    curves = pd.read_parquet(out / results.CURVES_FILE)
    assert set(curves["trial"]) == set(done["trial"])
    # Two finished trials are too few for any law: the study still ends with its tables and curves.
    assert "no scaling law fitted" in output and not (out / results.FIT_FILE).exists()
    assert (out / results.STUDY_FILE).is_file()
    assert (out / results.PLOTS_DIR / "training_curves.png").is_file()

    # Each finished trial's model was fine-tuned on RTE; its score sits beside its loss.
    assert done["glue_rte_accuracy"].between(0, 100).all()
    assert (done["glue_average"] == done["glue_rte_accuracy"]).all() and pd.isna(broken["glue_average"])
    assert (out / results.PLOTS_DIR / "glue_vs_compute.png").is_file()
