"""The training loop: one plain function per worker, run by Ray Train or called directly.

Every step, in labelled blocks: read budget progress from the `BudgetClock`, set the
recipe's batch (accumulation) and learning rate from it, run the micro-batches through the
DeepSpeed engine, agree on the step's loss and time in one collective, record the step's
metrics (`StepMeter`), maybe evaluate, checkpoint and report. Every `eval_every_s` seconds
of training it measures held-out MLM loss (off the budget's clock). Stops when the budget
is spent, then measures held-out loss and saves the model and `FinalResults`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from torch.profiler import record_function

from crammit.config import Device, TrainConfig
from crammit.data.loader import HeldOutBatches, MaskedBatch
from crammit.model.build import build_model
from crammit.model.flops import model_flops_utilization, peak_flops, training_flops_per_token
from crammit.track import RunTracker, run_tracker
from crammit.train import profile, rundir
from crammit.train.budget import few_steps_warning
from crammit.train.checkpoint import load_checkpoint, save_checkpoint
from crammit.train.engine import create_engine, process_group, set_learning_rate, torch_device
from crammit.train.ingest import training_data
from crammit.train.progress import BudgetClock, Progress
from crammit.train.recipe import accumulation_steps, learning_rate
from crammit.train.state import TrainState
from crammit.versions import versions

REPORT_TO_TUNE = "report_to_tune"  # loop_config key: the loop runs inside a Tune trial


def train_loop(loop_config: dict) -> rundir.FinalResults:
    """Train until the budget is spent; returns (and on rank 0 saves) the final results.

    `loop_config` holds the run's `config` (a TrainConfig dict) and the `launch` it belongs
    to: when Ray Train restarts the loop after a worker failure, the launch is the same.
    With REPORT_TO_TUNE the loop runs in a Tune trial's own process (Ray Train's local
    mode), where Ray Train keeps only the last report and runs no callbacks that would pass
    reports on: it reports to Tune itself."""
    config = TrainConfig.from_dict(loop_config["config"])
    if loop_config.get(REPORT_TO_TUNE):
        from ray import tune

        report = tune.report
    else:
        report = ray.train.report
    with process_group(config.device), run_tracker(config, dist.get_rank()) as tracker:
        return _train(config, loop_config["launch"], tracker, report)


def _train(config: TrainConfig, launch: str, tracker: RunTracker,
           report: Callable[[dict], None]) -> rundir.FinalResults:
    # set up: the model and engine, where the run stands, its data and its tables
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.recipe.seed)
    if config.device == Device.CPU and config.launch.cpu_threads:
        torch.set_num_threads(config.launch.cpu_threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    model = build_model(config.model)
    engine = create_engine(model, config)
    device = torch_device(config.device)
    rank, world_size = dist.get_rank(), dist.get_world_size()

    checkpoint = load_checkpoint(engine, run_dir)
    state = checkpoint or TrainState()
    resumed_at_step = state.step
    attempt = _start_attempt(run_dir, state, launch, device)
    train_batches, eval_batches = training_data(config, rank, world_size, state.sequences)
    # Rows after the checkpoint are redone; without one, every row is.
    kept_up_to = state.step if checkpoint else -1
    metrics = rundir.StepTable(run_dir / rundir.METRICS_FILE, rundir.StepMetrics, up_to_step=kept_up_to)
    evals = rundir.StepTable(run_dir / rundir.EVALS_FILE, rundir.EvalMetrics, up_to_step=kept_up_to)

    def record_evaluation() -> float:
        loss = evaluate(engine, eval_batches, config, device)
        if rank == 0:
            evals.append(rundir.EvalMetrics(step=state.step, tokens=state.tokens, flops=state.flops,
                                            elapsed_s=state.elapsed_s, eval_loss=loss))
            tracker.log({"eval_loss": loss}, state.step)  # the step's row holds its tokens, FLOPs and time
        return loss

    if state.initial_eval_loss is None:
        state.initial_eval_loss = record_evaluation()
    micro_batch = config.recipe.micro_batch_size
    meter = StepMeter(config, world_size, attempt)
    progress = Progress(config.budget, enabled=config.launch.progress_bar and rank == 0)
    profiler = profile.StepProfiler(run_dir, config.launch.profile_steps if rank == 0 else 0,
                                    max(profile.START_FRACTION, config.recipe.ramp_end), config.device)
    clock = BudgetClock(config.budget, state.elapsed_s, micro_batch * world_size * config.model.seq_len,
                        meter.flops_per_token)
    last_checkpoint_s = last_report_s = last_eval_s = state.elapsed_s

    while (fraction := clock.progress(state)) < 1.0:
        # the step's size: the ramp's accumulation, the budget's last step cut short
        clock.start_step()
        accumulation = accumulation_steps(config.recipe, world_size, fraction)
        left = clock.micro_batches_left(fraction)
        if left == 0:
            break
        if left is not None:
            accumulation = min(accumulation, left)
        profiler.step_started(fraction)

        # set the batch size and learning rate from budget progress
        engine.set_train_batch_size(accumulation * micro_batch * world_size)
        lr = learning_rate(config.recipe, fraction)
        set_learning_rate(engine, lr)

        # forward backward update
        with record_function(profile.DATA):
            step_batches = [next(train_batches) for _ in range(accumulation)]
        loss_share = train_step(engine, step_batches, world_size, device)

        # communicate: one collective for the step's loss and its time
        loss, elapsed_s, micro_batch_s = _agree_on_step(loss_share, clock.step_timing(accumulation),
                                                        world_size, device)
        clock.measured(micro_batch_s)

        # the step's metrics: counted into the state, one row of metrics.parquet
        row = meter.record(state, accumulation, loss, lr, elapsed_s, clock.step_seconds())
        if rank == 0:
            metrics.append(row)
            tracker.log(row, row.step)
        spent = clock.progress(state)
        progress.update(spent, row)
        profiler.step_finished()

        # the first step of this start measured the speed: warn if the budget holds few steps
        if state.step == resumed_at_step + 1 and rank == 0:
            warning = few_steps_warning(config.recipe, world_size, state.step, spent, clock.micro_batch_cost)
            if warning:
                progress.write(warning)

        # evaluate, checkpoint, report: each decided from agreed figures, so every rank
        # takes part. The run's last evaluation follows the loop.
        if config.eval_every_s and state.elapsed_s - last_eval_s >= config.eval_every_s and spent < 1.0:
            with clock.paused():  # evaluation is not training time
                record_evaluation()
            last_eval_s = state.elapsed_s
        if _checkpoint_due(config, state, last_checkpoint_s):
            if rank == 0:
                metrics.flush()
                evals.flush()
            save_checkpoint(engine, run_dir, state, config.launch.keep_checkpoints)
            last_checkpoint_s = state.elapsed_s
        if state.elapsed_s - last_report_s >= config.launch.report_every_s:
            report(_live_metrics(row, fraction=spent))
            last_report_s = state.elapsed_s
    progress.close()
    profiler.close()

    # the end: the last evaluation, a checkpoint, the final model and results
    final = rundir.FinalResults(
        initial_eval_loss=state.initial_eval_loss, eval_loss=record_evaluation(), steps=state.step,
        tokens=state.tokens, flops=state.flops, elapsed_s=state.elapsed_s, budget=config.budget.describe(),
        eval_sequences=len(eval_batches), eval_mask_rate=config.eval_mask_rate,
        resumed_at_step=resumed_at_step, worker_nodes=tuple(_worker_nodes()),
    )
    save_checkpoint(engine, run_dir, state, config.launch.keep_checkpoints)
    if rank == 0:
        metrics.flush()
        evals.flush()
        rundir.save_final_model(run_dir, engine.module, config)
        rundir.save_final(run_dir, final)
        tracker.finish(final.to_dict(), state.step)
    report({"step": state.step, "tokens": state.tokens, "budget_spent": 1.0, "eval_loss": final.eval_loss})
    return final


def _agree_on_step(loss_share: torch.Tensor, timing: tuple[float, float], world_size: int,
                   device: torch.device) -> tuple[float, float, float]:
    """The global mean loss, and the training seconds and seconds per micro-batch averaged
    over the ranks, in one collective: every rank then cuts and stops at the same step."""
    reduced = torch.cat([loss_share.reshape(1), torch.tensor(timing, device=device) / world_size])
    with record_function(profile.STEP_COLLECTIVE):
        dist.all_reduce(reduced)
        loss, elapsed_s, micro_batch_s = reduced.tolist()  # note: a CPU-GPU sync point, the step's end
    return loss, elapsed_s, micro_batch_s


class StepMeter:
    """The step's metrics: what a step of `accumulation` micro-batches adds to the run's
    state, and its row of metrics.parquet (throughput and MFU included)."""

    def __init__(self, config: TrainConfig, world_size: int, attempt: int) -> None:
        self.flops_per_token = training_flops_per_token(config.model, config.recipe.mask_rate)
        self.peak = peak_flops(torch.cuda.get_device_name()) if config.device == Device.CUDA else None
        self.sequences_per_micro_step = config.recipe.micro_batch_size * world_size
        self.seq_len = config.model.seq_len
        self.world_size = world_size
        self.attempt = attempt

    def record(self, state: TrainState, accumulation: int, loss: float, lr: float, elapsed_s: float,
               step_s: float) -> rundir.StepMetrics:
        batch_size = accumulation * self.sequences_per_micro_step
        step_tokens = batch_size * self.seq_len
        state.step += 1
        state.sequences += batch_size
        state.tokens += step_tokens
        state.flops += step_tokens * self.flops_per_token
        state.elapsed_s = elapsed_s
        tokens_per_s = step_tokens / step_s
        return rundir.StepMetrics(
            step=state.step, tokens=state.tokens, flops=state.flops, elapsed_s=elapsed_s, loss=loss, lr=lr,
            batch_size=batch_size, tokens_per_s=tokens_per_s,
            mfu=model_flops_utilization(tokens_per_s * self.flops_per_token, self.peak, self.world_size),
            attempt=self.attempt,
        )


def _start_attempt(run_dir: Path, state: TrainState, launch: str, device: torch.device) -> int:
    """Record this start of the loop in attempts.json and say what it continues; returns
    its number. A restart within the same launch (Ray Train recovering from a worker
    failure) adds the wall time since the checkpoint it restarts from, or since the failed
    attempt started from that same checkpoint, to the budget spent: lost work and restart
    cost the budget as they cost a rented GPU-day. Rank 0 decides; every rank agrees."""
    decided = torch.zeros(2, device=device, dtype=torch.float64)  # (seconds lost, attempt number)
    if dist.get_rank() == 0:
        path = run_dir / rundir.ATTEMPTS_FILE
        previous = rundir.read_attempts(run_dir)[-1] if path.exists() else None
        restart = previous is not None and previous["launch"] == launch
        lost = time.time() - max(state.saved_at, previous["started_at"]) if restart else 0.0
        number = rundir.record_attempt(run_dir, {
            "launch": launch, "started_at": time.time(), "resumed_at_step": state.step,
            "restart_after_failure": restart, "lost_s": lost, "versions": versions(),
        })
        if restart:
            print(f"restarted after a worker failure, from step {state.step}; the {lost:.0f} s since then "
                  "count against the budget", file=sys.stderr, flush=True)
        elif state.step:
            print(f"resuming at step {state.step} with {state.elapsed_s:.0f} s of training done",
                  file=sys.stderr, flush=True)
        decided = torch.tensor([lost, number], dtype=torch.float64, device=device)
    dist.broadcast(decided, src=0)
    state.elapsed_s += decided[0].item()
    return int(decided[1].item())


def _worker_nodes() -> list[str]:
    """The Ray node of each rank, in rank order ("local" outside a Ray cluster)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


def _live_metrics(row: rundir.StepMetrics, fraction: float) -> dict:
    """Live metrics for Ray Train's driver (and Tune's table when the run is a trial).
    Every rank reports at the same step: a report is a barrier across workers."""
    return {"step": row.step, "tokens": row.tokens, "loss": row.loss,
            "budget_spent": round(fraction, 4), "tokens_per_s": row.tokens_per_s}


def train_step(engine, batches: list[MaskedBatch], world_size: int, device: torch.device) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches; returns this rank's share of the
    step's loss (summed over ranks: the mean cross-entropy over all masked tokens).

    Each micro-batch's summed cross-entropy is divided by the masked-token count of the
    whole step, all workers included, and scaled to undo DeepSpeed's averaging over
    micro-batches and workers: the gradient is that of the exact global mean, so K workers
    with batch B, or B accumulated from micro-batches, match one worker with B at once.
    The accumulation boundary is set explicitly, as the ramp changes accumulation each step.
    """
    step_masked = torch.tensor(float(sum(batch.num_masked for batch in batches)), device=device)
    dist.all_reduce(step_masked)
    step_masked.clamp_(min=1)
    scale = len(batches) * world_size / step_masked
    loss_sum = torch.zeros((), device=device)
    for index, batch in enumerate(batches):
        engine.set_gradient_accumulation_boundary(index == len(batches) - 1)
        with record_function(profile.FORWARD):
            summed = engine(batch.input_ids.to(device), batch.labels.to(device))
        with record_function(profile.BACKWARD):
            engine.backward(summed * scale)
        loss_sum += summed.detach()
    with record_function(profile.OPTIMIZER):
        engine.step()
    return loss_sum / step_masked


@torch.no_grad()
def evaluate(engine, batches: HeldOutBatches, config: TrainConfig, device: torch.device) -> float:
    """Held-out MLM loss: the mean over every masked token of every held-out row, split
    over the ranks (the same figure at any worker count)."""
    engine.eval()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches.rank_batches(config.recipe.micro_batch_size, rank, world_size):
        totals[0] += engine(batch.input_ids.to(device), batch.labels.to(device)).double()
        totals[1] += batch.num_masked
    dist.all_reduce(totals)
    engine.train()
    if totals[1] == 0:
        raise ValueError("the held-out sequences hold no token that masking may choose")
    return (totals[0] / totals[1]).item()


def _checkpoint_due(config: TrainConfig, state: TrainState, last_checkpoint_s: float) -> bool:
    """Decided from the step count or the agreed elapsed time, so every rank agrees."""
    if config.launch.checkpoint_every_steps:
        return state.step % config.launch.checkpoint_every_steps == 0
    return state.elapsed_s - last_checkpoint_s >= config.launch.checkpoint_every_s
