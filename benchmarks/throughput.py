"""Training throughput of crammit's model against HF `BertForMaskedLM` of the same shape,
or (`--end-to-end`) of `crammit train` against its bare model.

Both models train through the same DeepSpeed engine (fp32 on CPU; bf16 and
torch.compile on GPU), on the same MLM batches, in one process; the table gives tokens/s
and the ratio crammit / HF (the baseline). MFU uses crammit's analytic FLOPs per token.

`--end-to-end` runs `crammit train --gpus 0 --size S --micro-batch B --batch-size B` (the
path users run: Ray Train, DeepSpeed, the data loader, masking, metrics; one AdamW step per
micro-batch) and compares its steady tokens/s (metrics.parquet, past the first steps) with
the bare model's forward + backward + AdamW step at the same micro-batch in this process
(the baseline), for each micro-batch given.

    python benchmarks/throughput.py --size tiny --device cpu
    python benchmarks/throughput.py --size crammed --device cuda --batch 128
    python benchmarks/throughput.py --end-to-end --size mini --batch 32,128
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

from crammit.config import Device, RecipeConfig, TrainConfig, model_config
from crammit.model.bert import IGNORE_INDEX, CrammedBert
from crammit.model.flops import model_flops_utilization, peak_flops, training_flops_per_token
from crammit.train import rundir
from crammit.train.engine import create_engine, process_group
from crammit.train.recipe import optimizer

MASK_RATE = 0.25


def hf_bert(config) -> BertForMaskedLM:
    """BERT with crammit's shape: same layers, hidden, heads, FFN width, vocab, length."""
    return BertForMaskedLM(BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.seq_len,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa",
    ))


def mlm_batches(config, batch: int, count: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        input_ids = torch.randint(5, config.vocab_size, (batch, config.seq_len), generator=generator)
        masked = torch.rand(input_ids.shape, generator=generator) < MASK_RATE
        yield input_ids.to(device), torch.where(masked, input_ids, IGNORE_INDEX).to(device)


def crammit_loss(engine, input_ids, labels):
    return engine(input_ids, labels) / (labels != IGNORE_INDEX).sum()


def hf_loss(engine, input_ids, labels):
    return engine(input_ids=input_ids, labels=labels).loss


def tokens_per_second(engine, loss_fn, batches, warmup: int, device: torch.device) -> float:
    """Median-free, plain rate: warm-up steps (compilation) excluded, then wall time."""
    def step(input_ids, labels):
        engine.backward(loss_fn(engine, input_ids, labels))
        engine.step()

    batches = list(batches)
    for input_ids, labels in batches[:warmup]:
        step(input_ids, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for input_ids, labels in batches[warmup:]:
        step(input_ids, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timed = batches[warmup:]
    return sum(ids.numel() for ids, _ in timed) / (time.perf_counter() - start)


def bare_tokens_per_second(shape, batch: int, steps: int, warmup: int) -> float:
    """The model alone on CPU: forward, backward and the trainer's AdamW step, one per micro-batch."""
    torch.manual_seed(0)
    model = CrammedBert(shape)
    adamw = optimizer(model, RecipeConfig(), fused=False)

    class Bare:  # the engine's backward/step, without DeepSpeed
        def __call__(self, input_ids, labels):
            return model(input_ids, labels)

        def backward(self, loss):
            loss.backward()

        def step(self):
            adamw.step()
            adamw.zero_grad(set_to_none=True)

    cpu = torch.device("cpu")
    batches = mlm_batches(shape, batch, warmup + steps, cpu)
    return tokens_per_second(Bare(), crammit_loss, batches, warmup, cpu)


def trainer_tokens_per_second(size: str, batch: int, steps: int, warmup: int) -> float:
    """`crammit train` on CPU at this micro-batch, one optimizer step per micro-batch: tokens/s
    over its steps after `warmup`, from its metrics.parquet (training time, evaluation excluded)."""
    with tempfile.TemporaryDirectory() as out:
        run_dir = Path(out) / "run"
        subprocess.run([sys.executable, "-m", "crammit", "train", "--gpus", "0", "--size", size,
                        "--micro-batch", str(batch), "--batch-size", str(batch),
                        "--tokens", str((warmup + steps) * batch * model_config(size).seq_len),
                        "--max-eval-sequences", "32", "--out", str(run_dir)], check=True)
        metrics = rundir.read_metrics(run_dir)
    first, last = metrics.iloc[warmup - 1], metrics.iloc[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def end_to_end(args) -> None:
    shape = model_config(args.size)
    rows = []
    for batch in args.batch:
        bare = bare_tokens_per_second(shape, batch, args.steps, args.warmup)
        trainer = trainer_tokens_per_second(args.size, batch, args.steps, args.warmup)
        rows.append((batch, bare, trainer))
    print(f"\nsize {args.size}, CPU ({torch.get_num_threads()} torch threads in the bare loop), "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'micro-batch':>11}{'bare model tok/s (base.)':>26}{'crammit train tok/s':>21}{'ratio':>8}")
    for batch, bare, trainer in rows:
        print(f"{batch:>11}{bare:>26,.0f}{trainer:>21,.0f}{trainer / bare:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--device", choices=[d.value for d in Device], default="cpu")
    parser.add_argument("--batch", type=lambda text: [int(b) for b in text.split(",")], default=[32],
                        help="sequences per step (both models); --end-to-end takes a comma-separated list")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--end-to-end", action="store_true",
                        help="crammit train against its bare model (CPU)")
    args = parser.parse_args()
    if args.end_to_end:
        end_to_end(args)
        return
    if len(args.batch) != 1:
        parser.error("--batch takes one size unless --end-to-end")
    args.batch = args.batch[0]

    device_kind = Device(args.device)
    shape = model_config(args.size)
    compile_models = device_kind == Device.CUDA and not args.no_compile
    config = TrainConfig(run_dir="", model=shape, device=device_kind, compile=compile_models,
                         recipe=RecipeConfig(batch_size=args.batch, micro_batch_size=args.batch))
    with process_group(device_kind):
        torch.manual_seed(0)
        ours = create_engine(CrammedBert(shape), config)
        device = next(ours.module.parameters()).device
        baseline_model = hf_bert(shape)
        if compile_models:
            baseline_model.bert.encoder.compile()
        theirs = create_engine(baseline_model, dataclasses.replace(config, compile=False))

        count = args.warmup + args.steps
        ours_rate = tokens_per_second(ours, crammit_loss, mlm_batches(shape, args.batch, count, device),
                                      args.warmup, device)
        theirs_rate = tokens_per_second(theirs, hf_loss, mlm_batches(shape, args.batch, count, device),
                                        args.warmup, device)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_flops(name) if device.type == "cuda" else None
    flops_per_token = training_flops_per_token(shape, MASK_RATE)
    mfu = model_flops_utilization(ours_rate * flops_per_token, peak, 1)
    precision = "bf16" if device_kind == Device.CUDA else "fp32"
    print(f"\nsize {args.size}, batch {args.batch}x{shape.seq_len}, {precision}, "
          f"compile {compile_models}, device {name}, {args.steps} timed steps after {args.warmup}")
    print(f"{'model':<28}{'tokens/s':>14}{'ratio':>9}{'MFU':>9}")
    print(f"{'HF BertForMaskedLM (base.)':<28}{theirs_rate:>14,.0f}{1.0:>9.2f}{'':>9}")
    mfu_text = f"{mfu:.1%}" if mfu is not None else "n/a"
    print(f"{'crammit CrammedBert':<28}{ours_rate:>14,.0f}{ours_rate / theirs_rate:>9.2f}{mfu_text:>9}")


if __name__ == "__main__":
    main()
