"""Training throughput of crammit's model against HF `BertForMaskedLM` of the same shape.

Both models train through the same DeepSpeed engine (fp32 on CPU; bf16 and
torch.compile on GPU), on the same MLM batches, in one process; the table gives tokens/s
and the ratio crammit / HF (the baseline). MFU uses crammit's analytic FLOPs per token.

    python benchmarks/throughput.py --size tiny --device cpu
    python benchmarks/throughput.py --size crammed --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from transformers import BertConfig, BertForMaskedLM

from crammit.config import Device, RecipeConfig, TrainConfig, model_config
from crammit.model.bert import IGNORE_INDEX, CrammedBert
from crammit.model.flops import model_flops_utilization, peak_flops, training_flops_per_token
from crammit.train.engine import create_engine, process_group

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--device", choices=[d.value for d in Device], default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (both models)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

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
