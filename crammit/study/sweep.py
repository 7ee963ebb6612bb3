"""Run a study on Ray Tune: one trial per (setting, size, budget), each a full crammit
training run in its own run directory under `DIR/trials/`.

Each Tune trial is a function that places its run on the cluster (its own `ScalingConfig`)
and trains it with the ordinary trainer (`run.fit`: a TorchTrainer, `fit()` inside the trial,
the Ray Train V2 way); `TuneReportCallback` carries the trainer's live reports into Tune's
table. The trial's run directory is the record of its progress, so a study run again re-uses
finished trials, resumes interrupted ones from their checkpoints and runs the rest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from ray import tune

from crammit.cluster import ClusterResources, start_ray, worker_cpus, worker_threads
from crammit.config import (
    Device,
    GlueRecipe,
    LaunchOptions,
    PrepareConfig,
    SequenceOrder,
    Tracking,
    TrainConfig,
)
from crammit.data.layout import MANIFEST, read_manifest
from crammit.errors import CrammitError, Interrupted, one_line
from crammit.io import atomic_path
from crammit.model.flops import parameter_count, training_flops_per_token
from crammit.study import results
from crammit.study.calibrate import CALIBRATION_SECONDS, calibrate, calibration_key
from crammit.study.design import Suggestion, suggest_design
from crammit.study.fit import seed_scatter
from crammit.study.laws import FitOptions
from crammit.study.plan import (
    Calibration,
    StudyCorpus,
    StudyPlan,
    TrialModel,
    cluster_problem,
    concurrent_trials,
    make_plan,
    measured_flops_per_s,
    trial_design,
)
from crammit.study.precision import (
    DEFAULT_NOISE,
    Precision,
    ReferenceLaw,
    design_precision,
    simulation_pool,
)
from crammit.study.report import write_report
from crammit.study.spec import StudySpec, Trial, trial_model
from crammit.study.table import fit_rows, study_rows
from crammit.track import StudyTracker
from crammit.train import rundir
from crammit.train.recipe import accumulation_target

# A trial's function only starts the trainer, whose workers hold the real resources; Tune
# needs a non-empty reservation for it.
TRIAL_DRIVER_CPUS = 0.01
TUNE_DIR = "tune"


def plan_study(spec: StudySpec, study_dir: Path, cluster: ClusterResources, calibrate_cpus: bool = True
               ) -> StudyPlan:
    """The plan of `spec` on `cluster`, counting trials `study_dir` already finished; CPU
    sizes no finished trial has timed are timed by a short calibration on this machine."""
    trials = results.trials_table(spec, study_dir)
    return make_plan(spec, trials, cluster, trial_models(spec), _study_corpus(spec, study_dir),
                     _calibration(spec, trials, cluster, study_dir) if calibrate_cpus else None)


def _calibration(spec: StudySpec, trials: pd.DataFrame, cluster: ClusterResources,
                 study_dir: Path) -> Calibration | None:
    """This machine's speed of the CPU settings' sizes that no finished trial has timed, with
    the torch threads each trial's worker will get: saved by an earlier run of the study
    where it timed the same, else timed now."""
    measured = measured_flops_per_s(trials)
    models = {(setting.name, size): (trial_model(spec, size, setting.arch), setting.recipe_config())
              for setting in spec.settings if not setting.gpus for size in setting.sizes
              if (setting.name, size) not in measured}
    if not models:
        return None
    concurrency = concurrent_trials(spec, cluster)
    threads = worker_threads(cluster.cpus, concurrency * max(s.workers for s in spec.settings if not s.gpus))
    keys = {name: calibration_key(*models[name], threads, concurrency) for name in models}
    saved = results.read_calibration(study_dir)
    untimed = {name: model for name, model in models.items() if keys[name] not in saved}
    timed = calibrate(untimed, threads, concurrent=concurrency) if untimed else {}
    rates = {name: timed[name] if name in timed else saved[keys[name]] for name in models}
    return Calibration(rates, CALIBRATION_SECONDS, threads, {keys[name]: rates[name] for name in models})


def study_precision(spec: StudySpec, study_dir: Path, cluster: ClusterResources, plan: StudyPlan,
                    law: ReferenceLaw, suggest: bool = False) -> tuple[list[str], Suggestion | None]:
    """What the planned study is expected to conclude (`precision.design_precision`), and,
    asked for or where the design leaves a parameter unidentified, a better design. The
    run-to-run noise is the study's seed scatter where its finished trials have repeats."""
    if plan.design["tokens"].isna().any():
        return [f"expected precision: not estimated until the trials' throughput is known "
                f"({plan.estimate_note})"], None
    trials = results.trials_table(spec, study_dir)
    scatter = seed_scatter(fit_rows(study_rows(trials)).rows)
    noise, source = DEFAULT_NOISE, "the default"
    if scatter:
        noise = scatter["overall"]["relative_sd"]
        source = f"the seed scatter of its finished trials ({scatter['overall']['dof']} degrees of freedom)"
    measured = measured_flops_per_s(trials)

    def design_of(candidate: StudySpec) -> pd.DataFrame:
        return trial_design(candidate, trial_models(candidate), measured, cluster)

    with simulation_pool() as pool:  # one for the whole plan: each process imports once
        def simulate(design: pd.DataFrame) -> Precision:
            return design_precision(design, law, noise, source, pool=pool)

        before = simulate(plan.design)
        lines = before.lines()
        if not (suggest or before.unidentified):
            return lines, None
        try:
            suggestion = suggest_design(spec, design_of, law, noise, simulate, before, pool)
        except CrammitError as error:
            return [*lines, f"suggestion: none ({error})"], None
    return [*lines, *suggestion.lines()], suggestion


def trial_models(spec: StudySpec) -> dict[tuple[str, str], TrialModel]:
    """Each setting's sizes on the study's corpus: parameters and training FLOPs per token."""
    models = {}
    for setting in spec.settings:
        for size in setting.sizes:
            model = trial_model(spec, size, setting.arch)
            models[(setting.name, size)] = TrialModel(
                parameter_count(model), training_flops_per_token(model, setting.recipe_config().mask_rate))
    return models


def _study_corpus(spec: StudySpec, study_dir: Path) -> StudyCorpus:
    """The study's corpus as far as it is known: a given or already prepared directory's
    manifest, else the order the study will prepare it in."""
    data = Path(spec.data.data) if spec.data.data else study_dir / results.DATA_DIR
    if not (data / MANIFEST).is_file():
        return StudyCorpus(spec.data.order)
    manifest = read_manifest(data)
    return StudyCorpus(manifest["config"]["order"], manifest["train_tokens"])


def run_study(spec: StudySpec, study_dir: Path, cluster: ClusterResources, cache_dir: Path,
              address: str | None = None, echo: Callable[[str], None] = print,
              allow_ordered_data: bool = False, tracking: Tracking = Tracking(),
              calibration: Calibration | None = None) -> pd.DataFrame:
    """Prepare the study's corpus once, run every unfinished trial on Ray Tune, then write
    the tables, the fits and the plots. Returns the trials table. A corpus in prevalence
    order that the budgets read more than a little of is refused unless `allow_ordered_data`.
    `tracking` logs the trials, their GLUE scores and the fit to experiment trackers; the
    `calibration` the study was planned at is saved for its reruns' plans."""
    problem = cluster_problem(spec, cluster)
    if problem:
        raise CrammitError(f"this cluster cannot run the study as asked: {problem}")
    study_dir.mkdir(parents=True, exist_ok=True)
    results.save_spec(study_dir, spec)
    if calibration is not None:
        results.save_calibration(study_dir, calibration.by_key)
    start_ray(address)
    data = _study_data(spec, study_dir, cache_dir)
    plan = plan_study(spec, study_dir, cluster, calibrate_cpus=False)
    if plan.ordered_data and not allow_ordered_data:
        raise CrammitError(f"{plan.ordered_data}, or pass --allow-ordered-data to run it as it is")
    tracker = StudyTracker(tracking, study_dir, {
        "study": spec.name, "unit": spec.unit.value, "settings": ",".join(s.name for s in spec.settings)})
    params = {trial.name: trial_params(trial) for trial in spec.trials()}
    configs = {trial.name: trial_config(spec, trial, study_dir, data, tracker.trial_tracking())
               for trial in spec.trials()}
    for name, config in configs.items():
        _check_compatible(config, name)
    # Longest first, as the plan's wall time assumes: the longest trial last would run alone.
    cost = {row.trial: (0.0 if pd.isna(row.hours) else row.hours, 0.0 if pd.isna(row.flops) else row.flops)
            for row in plan.design.itertuples()}
    pending = sorted((name for name in configs
                      if results.trial_status(Path(configs[name].run_dir)) is not results.TrialStatus.OK),
                     key=lambda name: cost[name], reverse=True)
    if pending:
        grid = _tune(spec, study_dir, data, configs, pending, cluster,
                     {name: params[name] for name in pending}, tracker.callbacks())
        _check_finished(spec, study_dir, grid, len(configs), echo)
    tracker.record_trials({name: (Path(config.run_dir), params[name]) for name, config in configs.items()
                           if results.trial_status(Path(config.run_dir)) is results.TrialStatus.OK})
    if spec.glue.tasks:
        _evaluate_glue(spec, study_dir, [Path(config.run_dir) for config in configs.values()], cluster,
                       address, echo, tracking)
    trials = results.write_tables(spec, study_dir)
    mixed = results.mixed_versions(trials)
    if mixed:
        echo(mixed)
    write_report(study_dir, FitOptions(resamples=spec.resamples), echo=echo)
    tracker.finish([study_dir / results.FIT_FILE, study_dir / results.PLOTS_DIR])
    return trials


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """What Tune's run of the pending trials came to, trial by trial: finished, failed (with
    the last line of its error), or stopped before it finished (Ctrl-C)."""

    finished: list[str]
    failed: dict[str, str]
    stopped: list[str]


def tune_outcome(grid: tune.ResultGrid) -> TuneOutcome:
    """Read from Tune's results: a trial's error makes it failed; a trial that returned has
    Tune's `done` in its last result; any other (never started, or stopped while running:
    Tune marks those terminated too) was stopped."""
    outcome = TuneOutcome([], {}, [])
    for result in grid:
        name = result.config["trial"]
        if result.error is not None:
            lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
            outcome.failed[name] = lines[-1] if lines else type(result.error).__name__
        elif (result.metrics or {}).get("done"):
            outcome.finished.append(name)
        else:
            outcome.stopped.append(name)
    return outcome


def _check_finished(spec: StudySpec, study_dir: Path, grid: tune.ResultGrid, trials: int,
                    echo: Callable[[str], None]) -> None:
    """Say which trials failed and why; and, as Tune returns rather than raising when Ctrl-C
    stops it, stop a study with trials that neither finished nor failed: it is not fitted
    as if complete."""
    outcome = tune_outcome(grid)
    for name, error in outcome.failed.items():
        echo(f"trial {name} failed: {error}")
    if outcome.stopped:
        results.write_tables(spec, study_dir)  # the finished trials, current on disk
        finished = trials - len(grid) + len(outcome.finished)
        failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
        raise Interrupted(f"{finished} of {trials} trials finished{failed}")


def _evaluate_glue(spec: StudySpec, study_dir: Path, run_dirs: list[Path], cluster: ClusterResources,
                   address: str | None, echo: Callable[[str], None], tracking: Tracking) -> None:
    """Fine-tune every finished trial on the study's GLUE tasks (those not done yet): one
    fine-tune per GPU on a GPU study, one per CPU otherwise."""
    from crammit.eval.glue import Placement, evaluate_glue

    finished = [run_dir for run_dir in run_dirs if results.trial_status(run_dir) is results.TrialStatus.OK]
    if not finished:
        return
    gpus = cluster.gpus if any(setting.gpus for setting in spec.settings) else 0
    glue = spec.glue
    evaluation = evaluate_glue(
        finished, glue.task_list(), range(glue.seeds), GlueRecipe(max_train_examples=glue.max_train_examples),
        glue.data_path(), Placement(gpus=gpus, workers=1 if gpus else cluster.cpus), address=address,
        tune_dir=(study_dir / TUNE_DIR).resolve(), echo=echo, tracking=tracking,
    )
    if evaluation.failed:
        echo(f"{len(evaluation.failed)} GLUE fine-tunes failed ({', '.join(evaluation.failed)}); "
             "run the study again to retry them")


def trial_params(trial: Trial) -> dict:
    """What a trial is, as its Tune config carries it: Tune's logger callbacks log these as
    its parameters (MLflow) or config (W&B)."""
    setting = trial.setting
    return {"setting": setting.name, "size": trial.size, "arch": setting.arch, "recipe": setting.recipe,
            "budget": trial.budget, "unit": trial.unit.value, "seed": trial.seed}


def trial_config(spec: StudySpec, trial: Trial, study_dir: Path, data: Path,
                 tracking: Tracking = Tracking()) -> TrainConfig:
    """The run a trial is: an ordinary `crammit train` config in the trial's directory."""
    setting = trial.setting
    config = TrainConfig(
        run_dir=str(results.trial_dir(study_dir, trial).resolve()),
        model=trial_model(spec, trial.size, setting.arch),
        recipe=dataclasses.replace(setting.recipe_config(), seed=setting.recipe_config().seed + trial.seed),
        budget=trial.unit.budget(trial.budget),
        data=str(data.resolve()),
        size_name=trial.size,
        device=Device.CUDA if setting.gpus else Device.CPU,
        num_workers=setting.workers_per_trial,
        compile=bool(setting.gpus),
        max_eval_sequences=spec.max_eval_sequences,
        launch=LaunchOptions(checkpoint_every_s=spec.checkpoint_minutes * 60,
                             progress_bar=False,  # Tune's table shows every trial's progress
                             tracking=tracking),
    )
    accumulation_target(config.recipe, config.num_workers)  # fail before any work
    return config


def _study_data(spec: StudySpec, study_dir: Path, cache_dir: Path) -> Path:
    """The study's one corpus: the given prepared directory, or its corpus prepared once
    into `DIR/data` (resumable: a re-run finds it prepared)."""
    if spec.data.data:
        return Path(spec.data.data)
    from crammit.data.pipeline import prepare_corpus

    data = study_dir / results.DATA_DIR
    prepare_corpus(PrepareConfig(corpus=spec.data.corpus, vocab_size=spec.data.vocab_size,
                                 seq_len=spec.data.seq_len, order=SequenceOrder(spec.data.order),
                                 seed=spec.data.seed), data, cache_dir)
    return data


def _check_compatible(config: TrainConfig, name: str) -> None:
    run_dir = Path(config.run_dir)
    if not rundir.is_run_dir(run_dir):
        return
    started, wanted = rundir.load_config(run_dir).run_defining(), config.run_defining()
    differ = [key for key in wanted if started.get(key) != wanted[key]]
    if differ:
        raise CrammitError(f"trial {name} in {run_dir} was started with another {', '.join(differ)}; "
                           "run the study file it was started with, or use another --out")


def _tune(spec: StudySpec, study_dir: Path, data: Path, configs: dict[str, TrainConfig],
          pending: list[str], cluster: ClusterResources, params: dict[str, dict],
          callbacks: list[tune.Callback]) -> tune.ResultGrid:
    from crammit.train.ingest import ingest

    concurrency = concurrent_trials(spec, cluster)
    # Read once, shared by every trial: each trial's own read would start Ray Data anew.
    # A trial that trains in its own process holds what its worker would have held.
    in_trial = {name for name in pending if trains_in_trial(configs[name])}
    cpus = worker_cpus(cluster.cpus, 1, concurrency)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, configs={name: configs[name].to_dict() for name in pending},
                             concurrency=concurrency, data=ingest(data),
                             in_trial=in_trial),
        lambda trial: {"cpu": cpus if trial["trial"] in in_trial else TRIAL_DRIVER_CPUS},
    )
    tuner = tune.Tuner(
        trainable,
        # With each trial's parameters beside its name: Tune's table and its logger callbacks show them.
        param_space={"trial": tune.grid_search(pending),
                     **{key: tune.sample_from(lambda resolved, key=key: params[resolved.config.trial][key])
                        for key in params[pending[0]]}},
        # A finished trial's actor runs the next trial: a new one costs 2-5 s of start-up a trial.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str((study_dir / TUNE_DIR).resolve()),
                                  callbacks=[_StudyTables(spec, study_dir), *callbacks]),
    )
    return tuner.fit()  # a failed trial is recorded in its directory and does not stop the others


def run_trial(params: dict, configs: dict, concurrency: int, data: dict,
              in_trial: set[str]) -> dict:
    """One Tune trial: start (or resume) the trial's run and train it to its budget, in this
    process if it is `in_trial`. A failure is written to the run directory, where the study's
    table reads it."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from crammit.train.run import fit, place, prepare_run

    config = TrainConfig.from_dict(configs[params["trial"]])
    run_dir = Path(config.run_dir)
    (run_dir / results.ERROR_FILE).unlink(missing_ok=True)
    # The trial places its own run, as Ray's Train-in-Tune guide does: its share of the
    # cluster beside the other trials running at once, less what this trial's driver holds.
    here = params["trial"] in in_trial
    config, scaling = place(config, here, concurrency, TRIAL_DRIVER_CPUS)
    try:
        if not rundir.is_run_dir(run_dir):
            prepare_run(config)
        final = fit(config, scaling, data=data, callbacks=() if here else (TuneReportCallback(),),
                    report_to_tune=here)
    except Exception as error:
        with atomic_path(run_dir / results.ERROR_FILE) as tmp:
            tmp.write_text(one_line(error) + "\n")
        raise
    # The trial's last result: its final metrics in Tune and in its logger callbacks' trackers.
    return {"eval_loss": final.eval_loss, "initial_eval_loss": final.initial_eval_loss,
            "tokens": final.tokens, "flops": final.flops, "step": final.steps, "elapsed_s": final.elapsed_s}


def trains_in_trial(config: TrainConfig) -> bool:
    """Whether a trial trains in its own process (Ray Train's local mode) instead of on a
    worker it starts. A trial of one CPU worker does: a Train controller, worker and their
    helper actors cost seconds of start-up a trial, which dominate a ladder of small CPU
    trials. A failure of such a trial is not restarted within the study; running the study
    again resumes it from its last checkpoint. GPU and multi-worker trials keep Ray Train's
    workers, its restarts and its placement."""
    return config.num_workers == 1 and config.device == Device.CPU


def _trial_name(trial) -> str:
    return trial.config["trial"]


class _StudyTables(tune.Callback):
    """Rebuilds the study's tables whenever a trial ends, so they are current even if the
    study is killed before it finishes."""

    def __init__(self, spec: StudySpec, study_dir: Path) -> None:
        self.spec, self.study_dir = spec, study_dir

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        results.write_tables(self.spec, self.study_dir)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        results.write_tables(self.spec, self.study_dir)
