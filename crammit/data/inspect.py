"""`crammit data inspect`: what a prepared directory holds, in a few lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from crammit.data.layout import LENGTH_BUCKET, TOKEN_COUNTS, TOKENIZER, read_manifest

BAR_WIDTH = 40


def describe(directory: Path, top: int = 20) -> str:
    manifest = read_manifest(directory)
    counts = manifest["counts"]
    lines = [f"{directory}: {manifest['train_sequences']:,} training sequences in "
             f"{len(manifest['shards'])} shards, {manifest['eval_sequences']:,} held out, "
             f"{manifest['train_tokens']:,} training tokens",
             f"source {manifest['source']}, order {manifest['config']['order']}, "
             f"tokenizer sha256 {manifest['tokenizer_sha256'][:12]}",
             "", "documents per stage:"]
    lines += [f"  {name:<24}{value:>14,}" for name, value in sorted(counts.items())
              if not name.startswith(LENGTH_BUCKET)]
    buckets = {int(name[len(LENGTH_BUCKET):]): value for name, value in counts.items()
               if name.startswith(LENGTH_BUCKET)}
    lines += ["", "document length (tokens):"]
    widest = max(buckets.values(), default=1)
    for bucket in sorted(buckets):
        label = f"{2 ** bucket}-{2 ** (bucket + 1) - 1}"
        bar = "#" * round(BAR_WIDTH * buckets[bucket] / widest)
        lines.append(f"  {label:>13} {buckets[bucket]:>10,} {bar}")
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
    frequencies = np.load(directory / TOKEN_COUNTS)
    total = frequencies.sum()
    lines += ["", f"top {top} tokens:"]
    for token_id, count in Counter(dict(enumerate(frequencies.tolist()))).most_common(top):
        lines.append(f"  {tokenizer.id_to_token(token_id):<16}{count:>14,} {count / total:>7.2%}")
    return "\n".join(lines)
