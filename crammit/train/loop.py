"""The training loop: one plain function per worker, run by Ray Train or called directly.

Every step: read budget progress, set the recipe's batch (accumulation) and learning
rate from it, run the micro-batches through the DeepSpeed engine, log, maybe checkpoint.
Stops when the budget is spent, then measures held-out MLM loss and saves the model.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from crammit.config import Device, TrainConfig
from crammit.data.loader import HeldOutBatches, MaskedBatch
from crammit.model.bert import IGNORE_INDEX
from crammit.model.build import build_model
from crammit.model.flops import model_flops_utilization, peak_flops, training_flops_per_token
from crammit.train import rundir
from crammit.train.checkpoint import load_checkpoint, save_checkpoint
from crammit.train.data import training_data
from crammit.train.engine import create_engine, process_group, set_learning_rate, torch_device
from crammit.train.progress import Progress
from crammit.train.recipe import accumulation_steps, learning_rate
from crammit.train.state import TrainState


def train_loop(config_dict: dict) -> dict:
    """Train until the budget is spent; returns (and on rank 0 saves) the final results."""
    config = TrainConfig.from_dict(config_dict)
    with process_group(config.device):
        return _train(config)


def _train(config: TrainConfig) -> dict:
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.recipe.seed)
    if config.device == Device.CPU and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    model = build_model(config.model)
    engine = create_engine(model, config)
    device = torch_device(config.device)
    rank, world_size = dist.get_rank(), dist.get_world_size()

    state = load_checkpoint(engine, run_dir) or TrainState()
    resumed_at_step = state.step
    train_batches, eval_batches = training_data(config, rank, world_size, state.sequences)
    if state.initial_eval_loss is None:
        state.initial_eval_loss = evaluate(engine, eval_batches, config, device)
    metrics = rundir.MetricsTable(run_dir, up_to_step=state.step)
    flops_per_token = training_flops_per_token(config.model, config.recipe.mask_rate)
    peak = peak_flops(torch.cuda.get_device_name()) if config.device == Device.CUDA else None
    progress = Progress(config.budget, enabled=config.progress_bar and rank == 0)
    last_checkpoint_s = last_report_s = state.elapsed_s
    clock_start = time.perf_counter() - state.elapsed_s

    while (fraction := config.budget.progress(state.elapsed_s, state.tokens, state.flops)) < 1.0:
        step_start = time.perf_counter()
        accumulation = accumulation_steps(config.recipe, world_size, fraction)
        micro_batch = config.recipe.micro_batch_size
        engine.set_train_batch_size(accumulation * micro_batch * world_size)
        lr = learning_rate(config.recipe, fraction)
        set_learning_rate(engine, lr)
        step_batches = [next(train_batches) for _ in range(accumulation)]
        loss_share = train_step(engine, step_batches, world_size, device)
        state.sequences += accumulation * micro_batch * world_size
        # One collective per step: the global mean loss, and an elapsed time every rank
        # agrees on, so all ranks stop at the same step.
        clock = torch.tensor((time.perf_counter() - clock_start) / world_size, device=device)
        shared = torch.stack([loss_share, clock])
        dist.all_reduce(shared)
        loss_value, elapsed = shared.tolist()
        step_tokens = accumulation * micro_batch * world_size * config.model.seq_len
        state.step += 1
        state.tokens += step_tokens
        state.flops += step_tokens * flops_per_token
        state.elapsed_s = elapsed
        tokens_per_s = step_tokens / (time.perf_counter() - step_start)
        row = rundir.StepMetrics(
            step=state.step, tokens=state.tokens, flops=state.flops, elapsed_s=elapsed,
            loss=loss_value, lr=lr, batch_size=accumulation * micro_batch * world_size,
            tokens_per_s=tokens_per_s,
            mfu=model_flops_utilization(tokens_per_s * flops_per_token, peak, world_size),
        )
        if rank == 0:
            metrics.append(row)
        progress.update(config.budget.progress(elapsed, state.tokens, state.flops), row)
        if _checkpoint_due(config, state, last_checkpoint_s):
            if rank == 0:
                metrics.flush()
            save_checkpoint(engine, run_dir, state, config.keep_checkpoints)
            last_checkpoint_s = state.elapsed_s
        if state.elapsed_s - last_report_s >= config.report_every_s:
            _report(row, fraction=config.budget.progress(elapsed, state.tokens, state.flops))
            last_report_s = state.elapsed_s
    progress.close()

    results = {
        "initial_eval_loss": state.initial_eval_loss,
        "eval_loss": evaluate(engine, eval_batches, config, device),
        "steps": state.step,
        "tokens": state.tokens,
        "flops": state.flops,
        "elapsed_s": state.elapsed_s,
        "budget": config.budget.describe(),
        "eval_sequences": len(eval_batches.sequences),
        "eval_mask_rate": config.eval_mask_rate,
        "resumed_at_step": resumed_at_step,
    }
    save_checkpoint(engine, run_dir, state, config.keep_checkpoints)
    if rank == 0:
        metrics.flush()
        rundir.save_final_model(run_dir, engine.module, config)
        rundir.save_final(run_dir, results)
    ray.train.report({"step": state.step, "tokens": state.tokens, "budget_spent": 1.0,
                      "eval_loss": results["eval_loss"]})
    return results


def _report(row: rundir.StepMetrics, fraction: float) -> None:
    """Live metrics for Ray Train's driver (and Tune's table when the run is a trial).
    Every rank reports at the same step: a report is a barrier across workers."""
    ray.train.report({"step": row.step, "tokens": row.tokens, "loss": row.loss,
                      "budget_spent": round(fraction, 4), "tokens_per_s": row.tokens_per_s})


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
        summed = engine(batch.input_ids.to(device), batch.labels.to(device))
        engine.backward(summed * scale)
        loss_sum += summed.detach()
    engine.step()
    return loss_sum / step_masked


@torch.no_grad()
def evaluate(engine, batches: HeldOutBatches, config: TrainConfig, device: torch.device) -> float:
    """Held-out MLM loss (mean over masked tokens), with masks fixed by position so every
    evaluation of a run sees the same inputs."""
    engine.eval()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    micro_batch = config.recipe.micro_batch_size
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    per_step = micro_batch * world_size
    for start in range(0, len(batches.sequences) - per_step + 1, per_step):
        batch = batches.batch(start, micro_batch, rank, world_size)
        totals[0] += engine(batch.input_ids.to(device), batch.labels.to(device)).double()
        totals[1] += (batch.labels != IGNORE_INDEX).sum()
    dist.all_reduce(totals)
    engine.train()
    if totals[1] == 0:
        raise ValueError("held-out set smaller than one data-parallel micro-batch")
    return (totals[0] / totals[1]).item()


def _checkpoint_due(config: TrainConfig, state: TrainState, last_checkpoint_s: float) -> bool:
    """Decided from the step count or the agreed elapsed time, so every rank agrees."""
    if config.checkpoint_every_steps:
        return state.step % config.checkpoint_every_steps == 0
    return state.elapsed_s - last_checkpoint_s >= config.checkpoint_every_s
