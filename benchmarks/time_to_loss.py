"""Time to loss: `crammit train` against what a user would otherwise run, Hugging Face's
`Trainer` with `BertForMaskedLM` and `DataCollatorForLanguageModeling`, for the same
wall-clock budget at the same model size.

Both train on the same prepared sequences with the same tokenizer (the corpus is prepared
once, with `crammit data prepare`). crammit runs its own arch and recipe through the CLI,
at the baseline's batch of 256 sequences (the crammed recipe's 8,192 is sized for a
GPU-day and would leave a few-minute CPU run a handful of steps). The baseline runs
BERT's hyper-parameters (crammit's `bert` recipe: AdamW 1e-4, betas (0.9, 0.999), eps 1e-6,
weight decay 0.01, clipping 1.0, 15 % masking 80/10/10, batch 256) with warm-up over the
first 1 % of the budget and linear decay to 0 at its end, keyed to training time as
crammit keys its own schedule. Both measure held-out MLM loss on the same sequences with the
same fixed 15 % masks, every `--eval-minutes` of training, off the clock.

    python benchmarks/time_to_loss.py --minutes 10 --size mini --out /tmp/time_to_loss

Prints a table of both loss curves and the time-to-loss ratio (the baseline's budget over
the time crammit needs to reach the baseline's final loss); writes `time_to_loss.png`,
`curves.csv` and both runs under `--out`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import (
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from crammit.config import RecipeConfig, TrainConfig, recipe_config
from crammit.data.layout import MANIFEST, TOKENIZER, model_for, shard_paths
from crammit.data.loader import MaskedBatch
from crammit.data.tokenizer import CLS, MASK, PAD, SEP, UNK
from crammit.model.bert import IGNORE_INDEX
from crammit.model.build import build_model
from crammit.model.original_bert import hf_config
from crammit.train import rundir
from crammit.train.ingest import held_out_set, special_ids
from crammit.train.recipe import learning_rate

CRAMMIT, BASELINE = "crammit train (crammed arch + recipe)", "HF Trainer + BertForMaskedLM (bert recipe)"
BATCH_SIZE = 256  # BERT's; both arms use it
EVAL_MICRO_BATCH = RecipeConfig().micro_batch_size  # crammit evaluates its held-out rows in these slices
NEVER = 10**9  # the baseline's step limit: its budget, not a step count, ends it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each arm")
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--eval-minutes", type=float, default=0.5, help="training minutes between evals")
    parser.add_argument("--max-eval-sequences", type=int, default=512)
    parser.add_argument("--hf-micro-batch", type=int, default=64, help="baseline sequences per pass")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="baseline torch threads")
    parser.add_argument("--out", type=Path, default=Path("time_to_loss"))
    args = parser.parse_args()

    data = prepare_once(args.out / "data", args.vocab_size)
    held_out = held_out_batches(data, args.size, args.max_eval_sequences)
    crammit_curve, crammit_final = run_crammit(args, data)
    check_same_evaluation(args.out / "crammit", held_out, crammit_final["eval_loss"])
    baseline_curve, baseline_final = run_baseline(args, data, held_out)
    curves = pd.concat([crammit_curve.assign(trainer=CRAMMIT), baseline_curve.assign(trainer=BASELINE)])
    curves.to_csv(args.out / "curves.csv", index=False)
    report(curves, {CRAMMIT: crammit_final, BASELINE: baseline_final}, args.minutes)
    plot(curves, args.out / "time_to_loss.png", args.size, args.minutes)


def prepare_once(directory: Path, vocab_size: int) -> Path:
    if not (directory / MANIFEST).is_file():
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "crammit", "data", "prepare", "--corpus", "embedded",
                        "--vocab-size", str(vocab_size), "--out", str(directory)], check=True)
    return directory


def held_out_batches(data: Path, size: str, max_eval_sequences: int) -> list[MaskedBatch]:
    """The batches crammit's evaluation of the crammit run uses on one worker."""
    config = TrainConfig(run_dir="", data=str(data), model=model_for(size, data),
                         max_eval_sequences=max_eval_sequences)
    return held_out_set(config, special_ids(config)).rank_batches(EVAL_MICRO_BATCH, rank=0, world_size=1)


@torch.no_grad()
def held_out_loss(summed_loss, batches: list[MaskedBatch]) -> float:
    """Mean cross-entropy over every masked token of every batch (crammit's definition);
    `summed_loss(input_ids, labels)` is a model's summed cross-entropy over the masked tokens."""
    total = sum(summed_loss(batch.input_ids, batch.labels).double().item() for batch in batches)
    return total / sum(batch.num_masked for batch in batches)


def hf_summed_loss(model: BertForMaskedLM):
    def summed_loss(input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids).logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    return summed_loss


def run_crammit(args, data: Path) -> tuple[pd.DataFrame, dict]:
    run_dir = args.out / "crammit"
    if not (run_dir / rundir.FINAL_FILE).is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "crammit", "train", "--gpus", "0", "--size", args.size,
                        "--hours", str(args.minutes / 60), "--data", str(data), "--out", str(run_dir),
                        "--batch-size", str(BATCH_SIZE), "--eval-minutes", str(args.eval_minutes),
                        "--max-eval-sequences", str(args.max_eval_sequences), "--checkpoint-minutes", "1000"],
                       check=True)
    metrics, final = rundir.read_metrics(run_dir), rundir.read_final(run_dir)
    final = {"eval_loss": final.eval_loss, "steps": final.steps, "elapsed_s": final.elapsed_s,
             "sequences": int(metrics["batch_size"].sum())}  # as `run_baseline`'s
    return rundir.read_evals(run_dir)[["step", "elapsed_s", "eval_loss"]], final


def check_same_evaluation(run_dir: Path, held_out: list[MaskedBatch], reported: float) -> None:
    """The baseline is measured with this script's evaluator: it must give crammit's own
    figure on crammit's final model, or the comparison is not like for like."""
    model = build_model(rundir.final_model_config(run_dir))
    model.load_state_dict(rundir.load_final_weights(run_dir))
    model.eval()
    ours = held_out_loss(model, held_out)
    print(f"crammit's final held-out loss: {reported:.4f} in final.json, {ours:.4f} by this script")
    if abs(ours - reported) > 1e-3:
        raise SystemExit("the evaluators disagree: the comparison would not be on the same held-out measure")


class BudgetClock:
    """Training time of the baseline: wall time since its first step, minus evaluations."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.started: float | None = None
        self.excluded = 0.0

    def training_s(self) -> float:
        return 0.0 if self.started is None else time.perf_counter() - self.started - self.excluded

    def fraction(self) -> float:
        return min(self.training_s() / self.budget_s, 1.0)


class TimeKeyedTrainer(Trainer):
    """HF's Trainer with BERT's schedule keyed to the time budget instead of a step count."""

    def __init__(self, *args, clock: BudgetClock, recipe: RecipeConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock, self.recipe = clock, recipe

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda _: learning_rate(self.recipe, self.clock.fraction()) / self.recipe.peak_lr)
        return self.lr_scheduler


class TimeBudget(TrainerCallback):
    """Stops training when the budget is spent; evaluates every `eval_every_s` of training."""

    def __init__(self, clock: BudgetClock, eval_every_s: float, evaluate) -> None:
        self.clock, self.eval_every_s, self.evaluate = clock, eval_every_s, evaluate
        self.rows: list[dict] = []

    def record(self, step: int) -> None:
        start = time.perf_counter()
        self.rows.append({"step": step, "elapsed_s": self.clock.training_s(), "eval_loss": self.evaluate()})
        self.clock.excluded += time.perf_counter() - start
        print(f"baseline: step {step}, {self.rows[-1]['elapsed_s'] / 60:.1f} min, "
              f"held-out loss {self.rows[-1]['eval_loss']:.4f}", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.started = time.perf_counter()
        self.record(0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.training_s() >= self.clock.budget_s:
            control.should_training_stop = True
        elif self.clock.training_s() - self.rows[-1]["elapsed_s"] >= self.eval_every_s:
            self.record(state.global_step)


def run_baseline(args, data: Path, held_out: list[MaskedBatch]) -> tuple[pd.DataFrame, dict]:
    torch.set_num_threads(args.threads)
    recipe = recipe_config("bert")
    model = BertForMaskedLM(hf_config(model_for(args.size, data, "bert")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(data / TOKENIZER), unk_token=UNK, pad_token=PAD,
                                        cls_token=CLS, sep_token=SEP, mask_token=MASK)
    train = load_dataset("parquet", data_files=[str(path) for path in shard_paths(data)], split="train",
                         cache_dir=str(args.out / "hf-cache"))
    clock = BudgetClock(args.minutes * 60)

    def evaluate() -> float:
        model.eval()
        loss = held_out_loss(hf_summed_loss(model), held_out)
        model.train()
        return loss

    budget = TimeBudget(clock, args.eval_minutes * 60, evaluate)
    trainer = TimeKeyedTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(args.out / "hf"), per_device_train_batch_size=args.hf_micro_batch,
            gradient_accumulation_steps=BATCH_SIZE // args.hf_micro_batch, learning_rate=recipe.peak_lr,
            adam_beta1=recipe.betas[0], adam_beta2=recipe.betas[1], adam_epsilon=recipe.adam_eps,
            weight_decay=recipe.weight_decay, max_grad_norm=recipe.grad_clip, max_steps=NEVER, use_cpu=True,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_drop_last=True, seed=recipe.seed,
        ),
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=recipe.mask_rate),
        callbacks=[budget], clock=clock, recipe=recipe,
    )
    result = trainer.train()
    steps = result.global_step
    budget.rows.append({"step": steps, "elapsed_s": clock.training_s(), "eval_loss": evaluate()})
    final = {"eval_loss": budget.rows[-1]["eval_loss"], "steps": steps, "elapsed_s": clock.training_s(),
             "sequences": steps * BATCH_SIZE}
    return pd.DataFrame(budget.rows), final


def loss_at(curve: pd.DataFrame, seconds: float) -> float:
    """The curve's loss at its last evaluation at or before `seconds` of training."""
    return float(curve[curve["elapsed_s"] <= seconds]["eval_loss"].iloc[-1])


def time_to_reach(curve: pd.DataFrame, target: float) -> float | None:
    """Training seconds until the curve first reaches `target`, interpolated linearly
    between evaluations; None if it never does."""
    times, losses = curve["elapsed_s"].to_numpy(), curve["eval_loss"].to_numpy()
    below = np.flatnonzero(losses <= target)
    if below.size == 0:
        return None
    k = below[0]
    if k == 0:
        return float(times[0])
    return float(np.interp(target, [losses[k], losses[k - 1]], [times[k], times[k - 1]]))


def report(curves: pd.DataFrame, finals: dict[str, dict], minutes: float) -> None:
    by_trainer = {name: curve.sort_values("elapsed_s") for name, curve in curves.groupby("trainer")}
    ours, theirs = by_trainer[CRAMMIT], by_trainer[BASELINE]
    marks = np.linspace(0, minutes * 60, 11)[1:]
    print("\n| training minutes | HF Trainer held-out loss (baseline) | crammit held-out loss | difference |")
    print("| ---: | ---: | ---: | ---: |")
    for mark in marks:
        a, b = loss_at(theirs, mark), loss_at(ours, mark)
        print(f"| {mark / 60:g} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    print("\n| trainer | steps | sequences | training s | final held-out loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in (BASELINE, CRAMMIT):
        final = finals[name]
        print(f"| {name} | {final['steps']} | {final['sequences']:,} | {final['elapsed_s']:.0f} | "
              f"{final['eval_loss']:.3f} |")
    grid = np.linspace(0, minutes * 60, 201)[1:]
    below = np.mean([loss_at(ours, t) < loss_at(theirs, t) for t in grid])
    print(f"\ncrammit's curve is below the baseline's over {below:.0%} of the budget")
    target = finals[BASELINE]["eval_loss"]
    reached = time_to_reach(ours, target)
    if reached is None:
        print(f"crammit never reaches the baseline's final loss {target:.3f}")
    elif reached == 0:
        print(f"crammit's untrained model is already below the baseline's final loss {target:.3f}")
    else:
        print(f"crammit reaches the baseline's final loss {target:.3f} after {reached / 60:.2f} min: "
              f"time-to-loss ratio {finals[BASELINE]['elapsed_s'] / reached:.2f}x")


def plot(curves: pd.DataFrame, path: Path, size: str, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    frame = curves.assign(minutes=curves["elapsed_s"] / 60)
    grid = sns.relplot(data=frame, x="minutes", y="eval_loss", hue="trainer", kind="line", marker="o",
                       height=4, aspect=1.6)
    grid.set_axis_labels("training minutes (evaluation excluded)", "held-out MLM loss (15 % masked)")
    grid.figure.suptitle(f"{size}, {minutes:g} min each on the same CPU cores", y=1.02)
    grid.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
