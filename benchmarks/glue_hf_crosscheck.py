"""GLUE cross-check: `crammit eval glue` against Hugging Face's `Trainer` fine-tuning the
run's `hf/` export on the same task, with the same recipe and examples, seed by seed.

crammit's side is its own evaluation (`evaluate_glue`, run here unless its results exist).
The other side is what a user would write: `AutoModelForSequenceClassification` and
`AutoTokenizer` from `RUN/hf/` (the export's own code), `Trainer` with the GLUE-sane recipe
in `TrainingArguments` (AdamW, linear warm-up then cosine, `DataCollatorWithPadding`). Both
read the examples through crammit's functions (the official TSVs, the same fixed
`--max-train-examples` subset) and score with `crammit.eval.metrics`; the export's
tokenizer must give crammit's token ids for every example, or the script stops. Both run on
CPUs in fp32: crammit's fine-tunes `--workers` at a time under Ray Tune, then the Trainer's
one at a time on `--threads` threads.

Seeds differ between the two sides (a seed draws the head and the example order from
different generators), so single seeds do not pair up; the medians are compared. A lockstep
check per task pairs them exactly: crammit's own `finetune` and the Trainer start from one
head draw and take the same batches, on the first LOCKSTEP_EXAMPLES training examples over
the whole 5-epoch schedule, once with crammit's learning-rate schedule and once with the
Trainer's (whose warm-up starts one step later); their training losses and dev scores show
what is left of the difference once initialisation and order are shared.

    nice -n 5 python benchmarks/glue_hf_crosscheck.py runs/tiny --glue-dir ../shared/glue

Prints each seed's dev score from both, each task's medians and their difference; writes
`crosscheck.json` (and each Trainer fine-tune's and lockstep check's result, so that a
second call resumes) under `--out` (default `RUN/glue-hf-crosscheck`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from crammit.config import GlueRecipe
from crammit.data.layout import TOKENIZER
from crammit.eval import finetune as crammit_finetune
from crammit.eval.finetune import EVAL_BATCH_SIZE, EncodedSplit, encode, warmup_cosine
from crammit.eval.glue import Placement, evaluate_glue, task_data
from crammit.eval.glue_data import TRAIN, GlueSplit, GlueTask, parse_tasks, score_name, target_names
from crammit.eval.glue_results import FinetuneJob, Init
from crammit.eval.metrics import score
from crammit.io import read_json, write_json
from crammit.model.build import build_model
from crammit.model.classifier import SequenceClassifier
from crammit.train import rundir

CRAMMIT, TRAINER = "crammit eval glue", "HF Trainer"
TOLERANCE = 2.0  # points: the medians must agree this closely
HEAD_PREFIX = "head."  # the classifier's weights, the only ones the export does not hold
LOCKSTEP_EXAMPLES = 320  # a multiple of the batch: 20 steps an epoch, 100 in all, epochs aligned
LOCKSTEP_SEED = 0
CRAMMIT_OWN, CRAMMIT_SHIFTED = "crammit finetune", "crammit finetune, Trainer's warm-up"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished `crammit train` run (with its hf/ export)")
    parser.add_argument("--glue-dir", type=Path, default=Path("../shared/glue"), help="official GLUE TSVs")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 on both sides")
    parser.add_argument("--max-train-examples", type=int, default=5000, help="0: the whole training set")
    parser.add_argument("--workers", type=int, default=2, help="crammit's CPU fine-tunes at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the Trainer fine-tunes")
    parser.add_argument("--out", type=Path, help="default: RUN/glue-hf-crosscheck")
    args = parser.parse_args()

    run_dir = args.run_dir.resolve()
    out = args.out or run_dir / "glue-hf-crosscheck"
    tasks = parse_tasks(args.tasks)
    seeds = range(args.seeds)
    recipe = GlueRecipe(max_train_examples=args.max_train_examples)

    started = time.perf_counter()
    crammit_scores = run_crammit(run_dir, tasks, seeds, recipe, args.glue_dir, args.workers)
    torch.set_num_threads(args.threads)
    # The config names remote code; without the flag, loading the tokenizer asks whether to run it.
    hf_tokenizer = AutoTokenizer.from_pretrained(run_dir / rundir.HF_DIR, trust_remote_code=True)
    crammit_tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER))
    trainer_scores, lockstep = {}, {}
    for task in tasks:
        splits = task_data(task, args.glue_dir, recipe)
        encoded = {name: tokenize(hf_tokenizer, crammit_tokenizer, split, recipe.seq_len,
                                  f"{task.name} {name}")
                   for name, split in splits.items()}
        trainer_dir = out / "trainer"
        check = partial(lockstep_check, run_dir, hf_tokenizer, task, encoded, recipe, out)
        lockstep[task.name] = cached(trainer_dir / f"{task.name}-lockstep.json", recipe, check)
        print_lockstep(task.name, lockstep[task.name])
        for seed in seeds:
            done = cached(trainer_dir / f"{task.name}-seed{seed}.json", recipe,
                          partial(finetune_with_trainer, run_dir / rundir.HF_DIR, hf_tokenizer, task, encoded,
                                  recipe, seed, out))
            trainer_scores[task.name, seed] = done["scores"]

    rows = [{"task": task.name, "metric": name, "seed": seed,
             CRAMMIT: 100 * crammit_scores[task.name, seed][name],
             TRAINER: 100 * trainer_scores[task.name, seed][name]}
            for task in tasks for name in target_names(task) for seed in seeds]
    medians = compare(rows)
    print_table(rows, medians)
    write_json(out / "crosscheck.json", {
        "run_dir": str(run_dir), "glue_dir": str(args.glue_dir.resolve()), "recipe": recipe.to_dict(),
        "seeds": list(seeds), "rows": rows, "medians": medians, "tolerance_points": TOLERANCE,
        "lockstep": lockstep,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "threads": args.threads, "elapsed_s": time.perf_counter() - started,
    })
    print(f"wrote {out / 'crosscheck.json'}")


def cached(path: Path, recipe: GlueRecipe, compute: Callable[[], dict]) -> dict:
    """`compute()`, kept at `path` so that a second call resumes; one kept from another recipe
    is refused rather than mixed in."""
    if not path.is_file():
        write_json(path, compute())
    done = read_json(path)
    if done["recipe"] != recipe.to_dict():
        raise SystemExit(f"{path} was made with another recipe; delete it to start over")
    return done


def run_crammit(run_dir: Path, tasks: tuple[GlueTask, ...], seeds: range, recipe: GlueRecipe, glue_dir: Path,
                workers: int) -> dict[tuple[str, int], dict[str, float]]:
    """crammit's dev scores (fractions) by task and seed; `evaluate_glue` fine-tunes only
    those it has no result for."""
    import ray

    evaluation = evaluate_glue([run_dir], tasks, seeds, recipe, glue_dir, Placement(gpus=0, workers=workers))
    if ray.is_initialized():
        ray.shutdown()  # its idle workers would hold memory through the Trainer fine-tunes
    if evaluation.failed:
        raise SystemExit(f"crammit's fine-tunes failed: {', '.join(evaluation.failed)}")
    return {(task.name, seed): read_json(FinetuneJob(str(run_dir), task.name, seed, Init.PRETRAINED)
                                         .result_path())["scores"]
            for task in tasks for seed in seeds}


def tokenize(hf_tokenizer: PreTrainedTokenizerBase, crammit_tokenizer: Tokenizer, split: GlueSplit,
             seq_len: int, what: str) -> Encoded:
    """Every example's input ids from the export's tokenizer, truncated as crammit truncates,
    and from crammit's (`finetune.encode`); stops unless they are the same."""
    pairs = (split.text_a,) if split.text_b is None else (split.text_a, split.text_b)
    ids = hf_tokenizer(*pairs, truncation="longest_first", max_length=seq_len)["input_ids"]
    expected = encode(crammit_tokenizer, split, seq_len)
    differing = [index for index, example in enumerate(ids)
                 if example != expected.ids[expected.offsets[index]:expected.offsets[index + 1]].tolist()]
    if differing:
        raise SystemExit(f"{what}: the export's tokenizer gives other ids than crammit's for "
                         f"{len(differing)} of {len(ids)} examples, the first at example {differing[0]}")
    print(f"{what}: {len(ids)} examples, the export's tokenizer gives crammit's ids for every one")
    return Encoded(ids, split.labels, expected)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A split's examples as the Trainer takes them (`input_ids`) and as crammit does (`crammit`)."""

    input_ids: list[list[int]]
    labels: np.ndarray
    crammit: EncodedSplit

    def first(self, count: int) -> Encoded:
        ids = self.crammit.ids[:self.crammit.offsets[count]]
        return Encoded(self.input_ids[:count], self.labels[:count],
                       EncodedSplit(ids, self.crammit.offsets[:count + 1], self.labels[:count]))


class _Examples(torch.utils.data.Dataset):
    """`encoded`'s examples at `order` (default: all, in the split's order)."""

    def __init__(self, encoded: Encoded, order: np.ndarray | None = None) -> None:
        self.encoded = encoded
        self.order = np.arange(len(encoded.labels)) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict:
        example = self.order[index]
        ids = self.encoded.input_ids[example]
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": self.encoded.labels[example].item()}


class _LossLog(TrainerCallback):
    """A line at each of the Trainer's logs: its mean training loss since the last, and the time so far."""

    def __init__(self, what: str) -> None:
        self.what, self.started, self.losses = what, time.perf_counter(), []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])
            print(f"  {self.what}: step {state.global_step}/{state.max_steps}, train loss "
                  f"{logs['loss']:.4f} ({time.perf_counter() - self.started:.0f} s)", flush=True)


class _InOrder(Trainer):
    """A Trainer that takes the training examples in the dataset's order: the lockstep check
    hands it crammit's shuffled order."""

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)


def training_arguments(recipe: GlueRecipe, seed: int, out: Path, **overrides) -> TrainingArguments:
    """The GLUE-sane recipe in the Trainer's terms."""
    return TrainingArguments(**{
        "output_dir": str(out / "trainer-scratch"), "per_device_train_batch_size": recipe.batch_size,
        "per_device_eval_batch_size": EVAL_BATCH_SIZE, "num_train_epochs": recipe.epochs,
        "learning_rate": recipe.lr, "adam_beta1": recipe.betas[0], "adam_beta2": recipe.betas[1],
        "adam_epsilon": recipe.adam_eps, "weight_decay": recipe.weight_decay,
        "lr_scheduler_type": "cosine", "warmup_steps": recipe.warmup_fraction,  # a float below 1: a fraction
        "optim": "adamw_torch",  # torch.optim.AdamW, as crammit's fine-tune
        "max_grad_norm": 0.0,  # the Trainer clips at 1.0 by default; the GLUE-sane recipe does not clip
        "seed": seed, "use_cpu": True, "report_to": "none", "save_strategy": "no", "eval_strategy": "no",
        "logging_strategy": "epoch", "disable_tqdm": True, **overrides,
    })


def load_export(export: Path, task: GlueTask) -> PreTrainedModel:
    """The export under a new head; stops unless every encoder weight came from the run."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        export, trust_remote_code=True, num_labels=task.num_labels, output_loading_info=True)
    if info["unexpected_keys"] or info["mismatched_keys"] or any(
            not key.startswith(HEAD_PREFIX) for key in info["missing_keys"]):
        raise SystemExit(f"{export} did not load as a pretrained encoder under a new head: {info}")
    return model


def dev_scores(trainer: Trainer, task: GlueTask, encoded: dict[str, Encoded]) -> dict[str, float]:
    """The Trainer's model scored on each dev set as crammit scores it (fractions)."""
    scores = {}
    for split in task.dev_splits:
        logits = trainer.predict(_Examples(encoded[split.name])).predictions
        predictions = logits[:, 0] if task.is_regression else np.argmax(logits, axis=-1)
        labels = encoded[split.name].labels
        for metric in task.metrics:
            scores[score_name(task, split.name, metric)] = score(metric, predictions, labels)
    return scores


def finetune_with_trainer(export: Path, tokenizer: PreTrainedTokenizerBase, task: GlueTask,
                          encoded: dict[str, Encoded], recipe: GlueRecipe, seed: int, out: Path) -> dict:
    """Fine-tune the export with `Trainer` on `encoded[TRAIN]`, score it on the dev sets."""
    what = f"{TRAINER} {task.name} seed {seed}"
    print(f"{what}: fine-tuning on {len(encoded[TRAIN].labels)} examples", flush=True)
    set_seed(seed)  # the head's initialisation, drawn as the model loads
    log = _LossLog(what)
    trainer = Trainer(model=load_export(export, task), args=training_arguments(recipe, seed, out),
                      train_dataset=_Examples(encoded[TRAIN]),
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[log])
    trainer.remove_callback(PrinterCallback)  # its raw dicts would repeat _LossLog's lines
    trainer.train()
    scores = dev_scores(trainer, task, encoded)
    elapsed = time.perf_counter() - log.started
    print(f"{what}: {', '.join(f'{name} {100 * value:.1f}' for name, value in scores.items())} "
          f"({elapsed:.0f} s)", flush=True)
    return {"task": task.name, "seed": seed, "scores": scores, "recipe": recipe.to_dict(),
            "train_examples": len(encoded[TRAIN].labels), "epoch_train_loss": log.losses,
            "elapsed_s": elapsed, "threads": torch.get_num_threads()}


def trainer_warmup(step: int, total_steps: int, warmup_fraction: float) -> float:
    """The Trainer's schedule (`get_cosine_schedule_with_warmup`) in crammit's terms: its
    warm-up factor at step s is s / warmup, crammit's (s + 1) / warmup; the cosine is the same."""
    warmup = math.ceil(warmup_fraction * total_steps)
    return step / warmup if step < warmup else warmup_cosine(step, total_steps, warmup_fraction)


def lockstep_check(run_dir: Path, tokenizer: PreTrainedTokenizerBase, task: GlueTask,
                   encoded: dict[str, Encoded], recipe: GlueRecipe, out: Path) -> dict:
    """crammit's `finetune` (with its schedule, then with the Trainer's) and the Trainer, from
    one head draw over the same batches of the first LOCKSTEP_EXAMPLES training examples
    (fewer in a smaller set, whole batches): each one's mean training loss per epoch and dev scores."""
    seed = LOCKSTEP_SEED
    available = len(encoded[TRAIN].labels)
    examples = min(LOCKSTEP_EXAMPLES, available - available % recipe.batch_size)
    data = {name: split.first(examples) if name == TRAIN else split for name, split in encoded.items()}
    print(f"lockstep {task.name}: {examples} examples, {recipe.epochs} epochs, seed {seed}", flush=True)
    model_config, weights = rundir.final_model_config(run_dir), rundir.load_final_weights(run_dir)
    crammit_data = {name: split.crammit for name, split in data.items()}
    pad_id = crammit_finetune.padding_id(Tokenizer.from_file(str(run_dir / TOKENIZER)))
    results = {}
    for variant, schedule in ((CRAMMIT_OWN, warmup_cosine), (CRAMMIT_SHIFTED, trainer_warmup)):
        losses: list[float] = []
        with mock.patch.object(crammit_finetune, "warmup_cosine", schedule):
            scores = crammit_finetune.finetune(model_config, weights, task, crammit_data, pad_id, recipe,
                                               seed, torch.device("cpu"), report=_append_loss(losses))
        results[variant] = {"epoch_train_loss": losses, "scores": scores}

    # crammit's fine-tune draws its head after a random encoder, from torch.manual_seed(seed),
    # and its order from numpy's generator of the seed, one permutation an epoch.
    torch.manual_seed(seed)
    head = SequenceClassifier(build_model(model_config), model_config, task.num_labels).head.state_dict()
    model = load_export(run_dir / rundir.HF_DIR, task)
    model.head.load_state_dict(head)
    generator = np.random.default_rng(seed)
    order = np.concatenate([generator.permutation(examples) for _ in range(recipe.epochs)])
    steps_per_epoch = examples // recipe.batch_size
    log = _LossLog(f"lockstep {task.name} {TRAINER}")
    # One pass over the five epochs' orders end to end: the same steps, so the same schedule.
    arguments = training_arguments(recipe, seed, out, num_train_epochs=1, logging_strategy="steps",
                                   logging_steps=steps_per_epoch)
    trainer = _InOrder(model=model, args=arguments, train_dataset=_Examples(data[TRAIN], order),
                       data_collator=DataCollatorWithPadding(tokenizer), callbacks=[log])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    results[TRAINER] = {"epoch_train_loss": log.losses, "scores": dev_scores(trainer, task, data)}
    return {"examples": examples, "seed": seed, "steps": steps_per_epoch * recipe.epochs,
            "recipe": recipe.to_dict(), "runs": results}


def _append_loss(losses: list[float]):
    return lambda metrics: losses.append(metrics["train_loss"])


def print_lockstep(task: str, check: dict) -> None:
    runs = check["runs"]
    print(f"\nlockstep {task}: one head draw, the same batches, {check['examples']} examples, "
          f"{check['steps']} steps")
    print(f"{'':<38} {'train loss per epoch':<44} dev")
    for variant, run in runs.items():
        losses = " ".join(f"{loss:.5f}" for loss in run["epoch_train_loss"])
        scores = ", ".join(f"{name} {100 * value:.2f}" for name, value in run["scores"].items())
        print(f"{variant:<38} {losses:<44} {scores}")
    for variant in (CRAMMIT_OWN, CRAMMIT_SHIFTED):
        pairs = zip(runs[TRAINER]["epoch_train_loss"], runs[variant]["epoch_train_loss"], strict=True)
        gap = max(abs(trainer - crammit) for trainer, crammit in pairs)
        print(f"largest epoch-loss difference, {TRAINER} vs {variant}: {gap:.2e}")


def compare(rows: list[dict]) -> list[dict]:
    """Per task and metric, both sides' medians over seeds and the Trainer's minus crammit's."""
    medians = []
    for key in dict.fromkeys((row["task"], row["metric"]) for row in rows):
        chosen = [row for row in rows if (row["task"], row["metric"]) == key]
        crammit, trainer = (statistics.median(row[side] for row in chosen) for side in (CRAMMIT, TRAINER))
        medians.append({"task": key[0], "metric": key[1], CRAMMIT: crammit, TRAINER: trainer,
                        "difference": trainer - crammit, "agree": abs(trainer - crammit) <= TOLERANCE})
    return medians


def print_table(rows: list[dict], medians: list[dict]) -> None:
    print(f"\n{'task':<6} {'metric':<10} {'seed':>6} {CRAMMIT:>18} {TRAINER:>11} {'difference':>11}")
    for row in rows:
        print(f"{row['task']:<6} {row['metric']:<10} {row['seed']:>6} {row[CRAMMIT]:>18.1f} "
              f"{row[TRAINER]:>11.1f} {row[TRAINER] - row[CRAMMIT]:>+11.1f}")
    for median in medians:
        verdict = "agree (within" if median["agree"] else "DIFFER (by more than"
        print(f"{median['task']:<6} {median['metric']:<10} {'median':>6} {median[CRAMMIT]:>18.1f} "
              f"{median[TRAINER]:>11.1f} {median['difference']:>+11.1f}  {verdict} {TOLERANCE:g} points)")


if __name__ == "__main__":
    main()
