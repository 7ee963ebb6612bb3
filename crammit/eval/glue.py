"""GLUE evaluation of finished runs on Ray Tune: one trial per (run, task, seed) fine-tune.

The driver reads each task once (a bad file fails before any work starts) and hands the
texts to the trials through the object store. A trial loads its run's final model and
tokenizer, fine-tunes and reports its dev scores; the driver writes them to
`RUN_DIR/glue/seeds/` as each trial ends, and why a trial failed once Tune is done. A
result on disk is never computed again, so an evaluation run again resumes where it
stopped. The files, and the summaries built from them, are `crammit.eval.glue_results`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import tune
from ray.tune import Result

from crammit.cluster import cluster_resources, start_ray, worker_threads
from crammit.config import GlueRecipe, Tracking
from crammit.errors import CrammitError, Interrupted, one_line
from crammit.eval.glue_data import TASKS, TRAIN, GlueSplit, GlueTask, load_task
from crammit.eval.glue_results import FinetuneJob, Init, glue_dir, save_failure, save_scores, write_summary
from crammit.io import read_json
from crammit.track import log_glue
from crammit.train import rundir

TUNE_DIR = "tune"
HUB_SOURCE = "hub:nyu-mll/glue"
SUBSET_SEED = 0  # every seed of a task fine-tunes on the same --max-train-examples subset


@dataclass(frozen=True)
class Placement:
    """Where fine-tunes run: one GPU each, `gpus` at once; or, with no GPUs, `workers` at
    once on the CPUs, which they share equally."""

    gpus: int = 1
    workers: int = 1

    def concurrency(self) -> int:
        return self.gpus or self.workers

    def trial_resources(self, cluster_cpus: int) -> dict[str, float]:
        return {"cpu": 1, "gpu": 1} if self.gpus else {"cpu": cluster_cpus / self.workers}

    def threads(self, cluster_cpus: int) -> int:
        return worker_threads(cluster_cpus, self.workers)


@dataclass(frozen=True)
class GlueEvaluation:
    """The summary (glue.json) of every run evaluated, and why each fine-tune that failed
    did (also in its `seeds/*.error.txt`), by fine-tune name."""

    summaries: dict[Path, dict]
    failed: dict[str, str]


def evaluate_glue(run_dirs: Sequence[Path], tasks: Sequence[GlueTask], seeds: Sequence[int],
                  recipe: GlueRecipe, glue_data: Path | None, placement: Placement,
                  init: Init = Init.PRETRAINED, address: str | None = None, tune_dir: Path | None = None,
                  echo: Callable[[str], None] = print, tracking: Tracking = Tracking()) -> GlueEvaluation:
    """Fine-tune every run's final model on every task with every seed (those not done
    yet) and score it on the dev sets. `glue_data` is a directory in the official GLUE
    layout; without it, tasks come from the Hugging Face hub. Tune's own records go to
    `tune_dir` (default: the first run's GLUE directory). `tracking` logs the summary of
    each run that fine-tuned now to experiment trackers (`track.log_glue`)."""
    run_dirs = [Path(run_dir).resolve() for run_dir in run_dirs]
    for run_dir in run_dirs:
        model = rundir.final_model_config(run_dir)
        if recipe.seq_len > model.seq_len:
            raise CrammitError(f"--seq-len {recipe.seq_len} exceeds the {model.seq_len} positions of the "
                               f"model in {run_dir}; use --seq-len {model.seq_len} or less")
    if len({run_dir.name for run_dir in run_dirs}) < len(run_dirs):
        raise CrammitError("run directories to evaluate together need distinct names")
    jobs = [FinetuneJob(str(run_dir), task.name, seed, init)
            for run_dir in run_dirs for task in tasks for seed in seeds]
    source = f"glue-dir:{glue_data.resolve()}" if glue_data else HUB_SOURCE
    for job in jobs:
        _check_recipe(job, recipe, source)
    pending = [job for job in jobs if not job.result_path().exists()]
    echo(f"GLUE: {len(jobs)} fine-tunes ({len(run_dirs)} run(s) x {len(tasks)} task(s) x {len(seeds)} "
         f"seed(s)), {len(jobs) - len(pending)} already done")
    errors: dict[str, str] = {}
    if pending:
        data = {task.name: task_data(task, glue_data, recipe)
                for task in tasks if any(job.task == task.name for job in pending)}
        _check_placement(placement, address)
        start_ray(address)
        tune_dir = tune_dir or glue_dir(run_dirs[0], init) / TUNE_DIR
        errors = _tune(pending, data, recipe, source, placement, tune_dir)
    failed = {job.name: errors[job.name] for job in pending if job.name in errors}
    for name, reason in failed.items():
        echo(f"GLUE fine-tune {name} failed: {reason}")
    # Tune returns rather than raising when Ctrl-C stops it: a fine-tune with neither scores
    # nor an error was stopped.
    if any(not job.result_path().exists() and job.name not in errors for job in pending):
        finished = sum(job.result_path().exists() for job in jobs)
        raise Interrupted(f"{finished} of {len(jobs)} GLUE fine-tunes finished")
    summaries = {run_dir: write_summary(run_dir, init) for run_dir in run_dirs}
    # Only runs with new scores: an evaluation run again would log the same ones twice.
    for run_dir in dict.fromkeys(Path(job.run_dir) for job in pending):
        log_glue(tracking, run_dir, glue_dir(run_dir, init), summaries[run_dir])
    return GlueEvaluation(summaries, failed)


def task_data(task: GlueTask, glue_data: Path | None, recipe: GlueRecipe) -> dict[str, GlueSplit]:
    """A task's splits, the training set cut to `recipe.max_train_examples` (a random
    subset fixed by SUBSET_SEED, in the file's order) when that is set."""
    splits = load_task(task, glue_data)
    train = splits[TRAIN]
    if recipe.max_train_examples and recipe.max_train_examples < len(train):
        chosen = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(train), recipe.max_train_examples,
                                                                    replace=False))
        splits[TRAIN] = train.take(chosen)
    return splits


def finetune_trial(params: dict, jobs: dict[str, FinetuneJob], data: dict[str, ray.ObjectRef],
                   recipe: GlueRecipe, threads: int, use_gpu: bool) -> None:
    """One Tune trial: fine-tune one run on one task with one seed, report the dev scores.
    `data` holds each task's splits in the object store: a trial fetches only its own."""
    import torch
    from tokenizers import Tokenizer

    from crammit.data.layout import TOKENIZER
    from crammit.eval.finetune import encode, finetune, padding_id

    job = jobs[params["job"]]
    run_dir = Path(job.run_dir)
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    torch.set_num_threads(threads)
    tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER))
    splits = ray.get(data[job.task])
    encoded = {name: encode(tokenizer, split, recipe.seq_len) for name, split in splits.items()}
    weights = rundir.load_final_weights(run_dir) if job.init is Init.PRETRAINED else None
    start = time.perf_counter()
    scores = finetune(rundir.final_model_config(run_dir), weights, TASKS[job.task], encoded,
                      padding_id(tokenizer), recipe, job.seed, device, report=tune.report)
    tune.report({**scores, "epoch": recipe.epochs, "elapsed_s": time.perf_counter() - start,
                 "device": torch.cuda.get_device_name(device) if use_gpu else "cpu"})


def _tune(jobs: list[FinetuneJob], data: dict[str, dict[str, GlueSplit]], recipe: GlueRecipe, source: str,
          placement: Placement, storage: Path) -> dict[str, str]:
    """Run the pending fine-tunes; returns why each that failed did, by name."""
    cpus = int(ray.cluster_resources()["CPU"])
    train_examples = {task: len(splits[TRAIN]) for task, splits in data.items()}
    # Largest training sets first, so no long fine-tune starts last while the others idle.
    by_name = {job.name: job for job in sorted(jobs, key=lambda job: -train_examples[job.task])}
    stored = {task: ray.put(splits) for task, splits in data.items()}
    trainable = tune.with_resources(
        tune.with_parameters(finetune_trial, jobs=by_name, data=stored, recipe=recipe,
                             threads=placement.threads(cpus), use_gpu=bool(placement.gpus)),
        placement.trial_resources(cpus),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(list(by_name))},
        tune_config=tune.TuneConfig(max_concurrent_trials=placement.concurrency(),
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"glue-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage),
                                  callbacks=[_SaveResults(by_name, train_examples, recipe, source)]),
    )
    grid = tuner.fit()  # a failed fine-tune leaves no scores and does not stop the others
    return record_failures(grid, by_name)


def record_failures(grid: Iterable[Result], jobs: dict[str, FinetuneJob]) -> dict[str, str]:
    """Why each fine-tune of Tune's results failed, written beside where its scores would be
    (the first line of what it raised, as a failed study trial's `error.txt`)."""
    failures = {}
    for result in grid:
        if result.error:
            job = jobs[Path(result.path).name]  # a trial's directory is named by its job (_trial_name)
            failures[job.name] = one_line(result.error)
            save_failure(job, failures[job.name])
    return failures


def _trial_name(trial) -> str:
    return trial.config["job"]


class _SaveResults(tune.Callback):
    """Writes each fine-tune's scores as soon as its trial ends, so none is lost if the
    evaluation is interrupted. Tune pickles its callbacks: this one holds data only."""

    def __init__(self, jobs: dict[str, FinetuneJob], train_examples: dict[str, int], recipe: GlueRecipe,
                 source: str) -> None:
        self.jobs, self.train_examples, self.recipe, self.source = jobs, train_examples, recipe, source

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        job = self.jobs[trial.config["job"]]
        result = trial.last_result
        save_scores(job, result, self.recipe, self.source, self.train_examples[job.task], result["elapsed_s"],
                    result["device"])


def _check_recipe(job: FinetuneJob, recipe: GlueRecipe, source: str) -> None:
    """A finished fine-tune counts only if it used the recipe and data asked for now."""
    path = job.result_path()
    if not path.exists():
        return
    done = read_json(path)
    if done["recipe"] != recipe.to_dict() or done["source"] != source:
        raise CrammitError(f"{path} was fine-tuned with another recipe or data; evaluate with the same "
                           f"flags, or delete {path.parent} to start over")


def _check_placement(placement: Placement, address: str | None) -> None:
    cluster = cluster_resources(address)
    if placement.gpus > cluster.gpus:
        fix = "--gpus 0 --workers K to fine-tune on CPUs" if cluster.gpus == 0 else f"--gpus {cluster.gpus}"
        raise CrammitError(f"asked for {placement.gpus} GPUs but the cluster has {cluster.gpus}; use {fix}")
    if not placement.gpus and placement.workers > cluster.cpus:
        raise CrammitError(f"asked for {placement.workers} CPU workers but the cluster has {cluster.cpus} "
                           f"CPUs; use --workers {cluster.cpus} or fewer")
