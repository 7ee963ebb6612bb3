"""A run's GLUE results on disk, and the summaries read from them. Imports neither Ray nor
torch, so a study's table and a notebook read GLUE scores without starting either.

    RUN_DIR/glue/seeds/TASK-seedS.json        one fine-tune's dev scores (fractions) and what produced them
    RUN_DIR/glue/seeds/TASK-seedS.error.txt   why that fine-tune's last try failed (gone once it succeeds)
    RUN_DIR/glue/results.parquet              one row per task and seed, scores in percent
    RUN_DIR/glue/glue.json                    per task the median, min and max over seeds; the average

`--from-scratch` results go to `RUN_DIR/glue-from-scratch/` instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pandas as pd

from crammit.config import GlueRecipe
from crammit.eval.glue_data import TASKS, GlueTask, score_names, target_names
from crammit.io import atomic_path, read_json, write_json

SEEDS_DIR = "seeds"
SUMMARY_FILE = "glue.json"
RESULTS_FILE = "results.parquet"
ERROR_SUFFIX = ".error.txt"


class Init(str, Enum):
    """What a fine-tune starts from: the run's pretrained model, or a random initialisation
    of the same shape (the control that shows what pretraining is worth)."""

    PRETRAINED = "pretrained"
    SCRATCH = "scratch"

    @property
    def directory(self) -> str:
        return "glue" if self is Init.PRETRAINED else "glue-from-scratch"


def glue_dir(run_dir: Path, init: Init = Init.PRETRAINED) -> Path:
    return run_dir / init.directory


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tune: a run's model on one task with one seed, and where its result goes."""

    run_dir: str
    task: str
    seed: int
    init: Init

    @property
    def name(self) -> str:
        return f"{Path(self.run_dir).name}-{self.task}-seed{self.seed}"

    def result_path(self) -> Path:
        return glue_dir(Path(self.run_dir), self.init) / SEEDS_DIR / f"{self.task}-seed{self.seed}.json"

    def error_path(self) -> Path:
        return self.result_path().with_suffix(ERROR_SUFFIX)


def save_scores(job: FinetuneJob, scores: dict[str, float], recipe: GlueRecipe, source: str,
                train_examples: int, elapsed_s: float, device: str) -> None:
    """A finished fine-tune's dev scores (fractions, named by `score_names`) and what
    produced them; an earlier try's failure is no longer the fine-tune's state."""
    write_json(job.result_path(), {
        "task": job.task, "seed": job.seed, "init": job.init.value,
        "scores": {name: scores[name] for name in score_names(TASKS[job.task])},
        "recipe": recipe.to_dict(), "source": source, "train_examples": train_examples,
        "elapsed_s": elapsed_s, "device": device,
    })
    job.error_path().unlink(missing_ok=True)


def save_failure(job: FinetuneJob, reason: str) -> None:
    """Why a fine-tune failed, beside where its result would be: the next evaluation retries it."""
    with atomic_path(job.error_path()) as tmp:
        tmp.write_text(reason + "\n")


def write_summary(run_dir: Path, init: Init = Init.PRETRAINED) -> dict:
    """Rebuild `results.parquet` and `glue.json` from every fine-tune finished for the run."""
    directory = glue_dir(run_dir, init)
    order = list(TASKS)
    finished = sorted((read_json(path) for path in (directory / SEEDS_DIR).glob("*.json")),
                      key=lambda result: (order.index(result["task"]), result["seed"]))
    rows = [{"task": result["task"], "seed": result["seed"], "init": result["init"],
             **{name: 100 * value for name, value in result["scores"].items()},
             "train_examples": result["train_examples"], "elapsed_s": result["elapsed_s"],
             "device": result["device"], "source": result["source"]} for result in finished]
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / RESULTS_FILE) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    tasks = {}
    for name in dict.fromkeys(result["task"] for result in finished):
        results = [result for result in finished if result["task"] == name]
        task = TASKS[name]
        tasks[name] = {
            "metrics": {metric: _spread([100 * result["scores"][metric] for result in results])
                        for metric in score_names(task)},
            "targets": target_names(task),
            "seeds": [result["seed"] for result in results],
            "recipe": results[-1]["recipe"], "source": results[-1]["source"],
            "train_examples": results[-1]["train_examples"],
        }
    summary = {"run_dir": str(run_dir), "init": init.value, "tasks": tasks, "average": average(tasks)}
    write_json(directory / SUMMARY_FILE, summary)
    return summary


def average(tasks: dict[str, dict]) -> dict:
    """The paper's GLUE average: the mean of the target metrics' medians, MNLI matched and
    mismatched counting as two. Over fewer tasks than GLUE's eight it says which it covers."""
    targets = [entry["metrics"][name]["median"] for entry in tasks.values() for name in entry["targets"]]
    covered = list(tasks)
    complete = set(covered) == set(TASKS)
    if complete:
        label = "GLUE average (8 tasks)"
    else:
        label = f"average over {', '.join(covered)} only ({len(covered)} of {len(TASKS)} GLUE tasks)"
    return {"value": statistics.fmean(targets) if targets else None, "tasks": covered, "complete": complete,
            "label": label}


def trial_columns(run_dir: Path, tasks: Sequence[GlueTask]) -> dict[str, float | None]:
    """A run's GLUE scores as columns of a study's trials table: each task's target
    metrics (`glue_rte_accuracy`, `glue_mnli_matched_accuracy`, ...) and `glue_average`,
    their mean, which is None until every task has a result."""
    path = glue_dir(run_dir) / SUMMARY_FILE
    evaluated = read_json(path)["tasks"] if path.is_file() else {}
    columns = {}
    for task in tasks:
        for name in target_names(task):
            entry = evaluated.get(task.name)
            columns[f"glue_{task.name}_{name}"] = entry["metrics"][name]["median"] if entry else None
    values = list(columns.values())
    columns["glue_average"] = statistics.fmean(values) if values and None not in values else None
    return columns


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def render(summary: dict) -> str:
    """The summary as a table: per task and metric the median over seeds, its spread, and
    how many examples the task was fine-tuned on."""
    title = {Init.PRETRAINED.value: "pretrained", Init.SCRATCH.value: "randomly initialised (from scratch)"}[
        summary["init"]]
    lines = [f"GLUE dev scores, {title} model of {summary['run_dir']}",
             f"{'task':<6} {'metric':<22} {'median':>7} {'min-max':>13} {'seeds':>5} {'train':>7}"]
    for name, entry in summary["tasks"].items():
        for metric, spread in entry["metrics"].items():
            target = "*" if metric in entry["targets"] else " "
            lines.append(f"{name:<6} {metric + target:<22} {spread['median']:>7.1f} "
                         f"{spread['min']:>6.1f}-{spread['max']:<6.1f} {len(spread['values']):>5} "
                         f"{entry['train_examples']:>7}")
    mean = summary["average"]
    if mean["value"] is not None:
        lines.append(f"{mean['label']}: {mean['value']:.1f}  (* the metrics it averages)")
    return "\n".join(lines)
