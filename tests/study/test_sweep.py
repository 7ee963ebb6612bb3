"""Studies end to end on Ray Tune (2 CPUs): every trial a crammit run, resumable after a kill."""

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray

from crammit.cluster import ClusterResources, cluster_resources
from crammit.config import LaunchOptions
from crammit.data.layout import read_manifest
from crammit.errors import CrammitError, Interrupted
from crammit.study import results, sweep
from crammit.study.spec import Setting, StudyData, StudySpec, StudyUnit, TrialStatus
from crammit.study.sweep import _study_data, plan_study, run_study
from crammit.train import rundir
from crammit.train.checkpoint import latest_tag
from tests.helpers import tiny_train_config, write_glue_dir

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
    # toy_data is in prevalence order, which a study refuses unless told (tested below).
    arguments = [str(study_file(tmp_path)), "--out", str(out), "--data", str(toy_data), "--address", address,
                 "--allow-ordered-data"]

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
    assert (done["status"] == TrialStatus.OK).all() and (done["eval_loss"] < done["initial_eval_loss"]).all()
    assert (done["unique_tokens"] == read_manifest(toy_data)["train_tokens"]).all()
    assert done["epochs"].tolist() == pytest.approx((done["tokens"] / done["unique_tokens"]).tolist())
    broken = trials[trials["setting"] == "broken"].iloc[0]
    assert broken["status"] == TrialStatus.FAILED.value and "fewer than one micro-batch" in broken["error"]

    final = rundir.read_final(victim)
    assert final.resumed_at_step >= checkpoint_step > 0  # from its checkpoint, not from step 0
    steps = rundir.read_metrics(victim)["step"].tolist()
    assert steps == list(range(1, final.steps + 1))  # each step once, none repeated or lost

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


def token_study(data: str = "", corpus: str = "embedded") -> StudySpec:
    return StudySpec("ordered", (Setting("tiny", ("tiny",), (2e4, 4e5), gpus=0),), unit=StudyUnit.TOKENS,
                     data=StudyData(corpus=corpus, data=data, vocab_size=512))


def test_a_prevalence_ordered_corpus_is_refused_where_budgets_read_much_of_it(tmp_path, toy_data, cache_dir):
    spec = token_study(data=str(toy_data))
    cluster = cluster_resources(ray.get_runtime_context().gcs_address)
    plan = plan_study(spec, tmp_path / "study", cluster, calibrate_cpus=False)  # its wall time is not asked
    share = 4e5 / read_manifest(toy_data)["train_tokens"]
    assert share > 0.1 and plan.ordered_data.startswith(f"the corpus is in prevalence order and the budgets "
                                                        f"reach {min(share, 1):.0%} of it")
    assert "refused unless --allow-ordered-data" in plan.render()
    with pytest.raises(CrammitError, match="pass --allow-ordered-data to run it as it is"):
        run_study(spec, tmp_path / "study", cluster, cache_dir)
    assert not (tmp_path / "study" / results.TRIALS_DIR).exists()  # refused before any trial


def tune_result(trial: str, metrics: dict | None = None, error: Exception | None = None) -> SimpleNamespace:
    """One trial's entry of Tune's ResultGrid, as `sweep.tune_outcome` reads it."""
    return SimpleNamespace(config={"trial": trial}, metrics=metrics or {}, error=error)


def test_tune_s_results_say_which_trials_finished_failed_or_were_stopped():
    grid = [tune_result("a", {"eval_loss": 3.0, "done": True}),
            tune_result("b", error=RuntimeError("Traceback:\n  File x\nCrammitError: the corpus is short")),
            tune_result("c", {"eval_loss": 5.0, "done": False}),  # stopped mid-run: Tune marks it terminated
            tune_result("d")]  # never started
    outcome = sweep.tune_outcome(grid)
    assert outcome.finished == ["a"] and outcome.stopped == ["c", "d"]
    assert outcome.failed == {"b": "CrammitError: the corpus is short"}


def test_a_study_tune_stopped_early_says_so_instead_of_fitting(tmp_path, toy_data, cache_dir, monkeypatch):
    """Ctrl-C makes Tune stop its trials and return: the study then says what finished (the
    CLI adds how to continue and exits 130) rather than fitting what it has as if complete."""
    spec = dataclasses.replace(token_study(data=str(toy_data)), name="stopped")
    # Tune returned with one trial failed and the other not started.
    first, second = (trial.name for trial in spec.trials())
    grid = [tune_result(first, error=RuntimeError("out of memory")), tune_result(second)]
    monkeypatch.setattr(sweep, "_tune", lambda *args: grid)
    study_dir = tmp_path / "study"
    cluster = cluster_resources(ray.get_runtime_context().gcs_address)
    lines = []
    with pytest.raises(Interrupted, match=r"^0 of 2 trials finished, 1 failed$"):
        run_study(spec, study_dir, cluster, cache_dir, allow_ordered_data=True, echo=lines.append)
    assert f"trial {first} failed: out of memory" in lines
    assert (study_dir / results.TRIALS_FILE).is_file() and not (study_dir / results.FIT_FILE).exists()


@pytest.mark.slow
def test_a_study_s_one_cpu_worker_trials_train_in_reused_tune_actors(tmp_path, monkeypatch):
    """A finished trial's actor runs the next, and a trial of one CPU worker trains in it,
    holding its worker's CPUs: a new actor, or a Train worker a trial, costs seconds a trial
    (benchmarks/trial_startup.py). Trials of more workers keep Ray Train's."""
    from crammit.train import ingest

    tuners, trials = [], {}
    monkeypatch.setattr(ingest, "ingest", lambda data: {})
    monkeypatch.setattr(sweep.tune, "with_parameters",
                        lambda trainable, **parameters: trials.update(parameters) or trainable)
    monkeypatch.setattr(sweep.tune, "with_resources",
                        lambda trainable, resources: trials.update(resources=resources) or trainable)
    monkeypatch.setattr(sweep.tune, "Tuner",
                        lambda *args, **kwargs: tuners.append(kwargs) or SimpleNamespace(fit=lambda: None))
    one = tiny_train_config(tmp_path / "one", tmp_path / "corpus.txt")
    two = dataclasses.replace(one, num_workers=2, run_dir=str(tmp_path / "two"))
    sweep._tune(token_study(), tmp_path, tmp_path, {"one": one, "two": two}, ["one", "two"],
                ClusterResources(cpus=5, gpus=0), params={"one": {}, "two": {}}, callbacks=[])
    assert tuners[0]["tune_config"].reuse_actors
    assert trials["in_trial"] == {"one"}
    concurrency = sweep.concurrent_trials(token_study(), ClusterResources(cpus=5, gpus=0))
    assert trials["resources"]({"trial": "one"}) == {"cpu": (5 - 1) / concurrency}
    assert trials["resources"]({"trial": "two"}) == {"cpu": sweep.TRIAL_DRIVER_CPUS}


def test_a_resumed_trial_may_launch_differently_but_not_be_another_run(tmp_path):
    saved = tiny_train_config(tmp_path, tmp_path / "corpus.txt")
    rundir.save_config(tmp_path, saved)
    sweep._check_compatible(dataclasses.replace(saved, launch=LaunchOptions(checkpoint_every_s=60)), "t")
    other_lr = dataclasses.replace(saved, recipe=dataclasses.replace(saved.recipe, peak_lr=0.1))
    with pytest.raises(CrammitError, match=r"^trial t in .* was started with another recipe; run the study"):
        sweep._check_compatible(other_lr, "t")


def test_a_rerun_plans_at_the_calibration_its_first_run_saved(tmp_path, monkeypatch):
    """The plan of a study run again (to resume it) reuses the CPU speeds its first run
    timed, and times only a setting whose timed model differs."""
    timed = []

    def calibrate(models, threads, concurrent=1):
        timed.append(sorted(models))
        return {name: 1e9 * (index + 1) for index, name in enumerate(sorted(models))}

    monkeypatch.setattr(sweep, "calibrate", calibrate)
    spec, study_dir, cluster = token_study(), tmp_path / "study", ClusterResources(cpus=2, gpus=0)
    first = plan_study(spec, study_dir, cluster)
    assert timed == [[("tiny", "tiny")]] and first.calibration.rates == {("tiny", "tiny"): 1e9}
    study_dir.mkdir()
    results.save_calibration(study_dir, first.calibration.by_key)
    again = plan_study(spec, study_dir, cluster)
    assert len(timed) == 1 and again.calibration.rates == first.calibration.rates
    faster = dataclasses.replace(spec, settings=(dataclasses.replace(
        spec.settings[0], overrides={"micro_batch_size": 8}),))
    plan_study(faster, study_dir, cluster)
    assert timed[1:] == [[("tiny", "tiny")]]  # another micro-batch: timed anew


def test_a_study_shuffles_the_corpus_it_prepares(tmp_path, corpus_file, cache_dir, ray_session):
    spec = token_study(corpus=str(corpus_file))
    assert spec.data.order == "shuffle"
    data = _study_data(spec, tmp_path, cache_dir)
    manifest = read_manifest(data)
    assert manifest["config"]["order"] == "shuffle" and manifest["config"]["seed"] == 0
    plan = plan_study(spec, tmp_path, cluster_resources(ray.get_runtime_context().gcs_address),
                      calibrate_cpus=False)  # its wall time is not asked
    assert plan.ordered_data == "" and f"{manifest['train_tokens']:,} unique training tokens, shuffle order" \
        in plan.corpus
