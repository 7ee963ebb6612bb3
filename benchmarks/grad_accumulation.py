"""How far a step's gradient drifts when its micro-batch gradients are summed in bf16.

DeepSpeed's bf16 mode without ZeRO (crammit's GPU engine by default) keeps `.grad` in the
model's dtype, so a step of K micro-batches adds K bf16 gradients in bf16. This measures
the error of that sum against the fp32 sum of the same gradients (computed in fp32 from
the crammed model on MLM micro-batches of a prepared corpus), as ‖bf16 sum − fp32 sum‖ /
‖fp32 sum‖. The baseline is one rounding of the fp32 sum to bf16: what fp32 accumulation
(torch.autocast, or ZeRO's fp32 gradient buffers) costs once at the end.

    python benchmarks/grad_accumulation.py --data PREPARED_DIR --size tiny --micro-batches 8,64
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from crammit.config import model_config
from crammit.data.layout import TOKENIZER, read_manifest, sequence_rows, shard_paths
from crammit.data.loader import mask_tokens
from crammit.data.tokenizer import SpecialIds
from crammit.model.bert import CrammedBert


def relative_error(approximate: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    difference = sum(((a.float() - e) ** 2).sum() for a, e in zip(approximate, exact, strict=True))
    return float((difference / sum((e**2).sum() for e in exact)) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `crammit data prepare` directory")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--layers", type=int, default=4, help="blocks of the model (fewer: faster on CPU)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--micro-batches", default="8,64", help="steps of K micro-batches, comma-separated")
    parser.add_argument("--mask-rate", type=float, default=0.25)
    args = parser.parse_args()

    manifest = read_manifest(args.data)
    prepared = manifest["config"]
    shape = dataclasses.replace(model_config(args.size), num_layers=args.layers,
                                vocab_size=prepared["vocab_size"], seq_len=prepared["seq_len"])
    special = SpecialIds.of(Tokenizer.from_file(str(args.data / TOKENIZER)))
    rows = sequence_rows(pq.read_table(shard_paths(args.data, manifest)[0]))
    torch.manual_seed(0)
    model = CrammedBert(shape)
    generator = torch.Generator().manual_seed(0)

    print(f"size {args.size} ({args.layers} layers), micro-batch {args.micro_batch}x{shape.seq_len}, "
          f"{args.data}")
    print(f"{'micro-batches':>14}{'one rounding (baseline)':>26}{'bf16 accumulation':>20}{'ratio':>9}")
    for count in (int(k) for k in args.micro_batches.split(",")):
        fp32_sum = [torch.zeros_like(p) for p in model.parameters()]
        bf16_sum = [torch.zeros_like(p, dtype=torch.bfloat16) for p in model.parameters()]
        for index in range(count):
            start = index * args.micro_batch % (len(rows) - args.micro_batch)
            batch = torch.from_numpy(rows[start:start + args.micro_batch].astype("int64"))
            input_ids, labels = mask_tokens(batch, special, shape.vocab_size, args.mask_rate, generator)
            model.zero_grad()
            model(input_ids, labels).backward()
            for exact, low, parameter in zip(fp32_sum, bf16_sum, model.parameters(), strict=True):
                exact += parameter.grad
                low += parameter.grad.to(torch.bfloat16)
        baseline = relative_error([s.to(torch.bfloat16) for s in fp32_sum], fp32_sum)
        accumulated = relative_error(bf16_sum, fp32_sum)
        print(f"{count:>14}{baseline:>26.3%}{accumulated:>20.3%}{accumulated / baseline:>9.1f}")


if __name__ == "__main__":
    main()
