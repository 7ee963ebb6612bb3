"""What a worker trains and evaluates on: a prepared directory (`crammit data prepare`).

Each worker streams its own shard of the training sequences through Ray Data
(`ray.train.get_dataset_shard`); every worker reads the same held-out sequences from
`eval.parquet`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from crammit.config import TrainConfig
from crammit.data.layout import EVAL_FILE, INPUT_IDS, TOKENIZER, sequence_rows
from crammit.data.loader import HeldOutBatches, MaskedBatch, shard_batches
from crammit.data.tokenizer import SpecialIds

TRAIN_DATASET = "train"  # the name Ray Train's `datasets` and `get_dataset_shard` share


def training_data(
    config: TrainConfig, rank: int, world_size: int, sequences_done: int,
) -> tuple[Iterator[MaskedBatch], HeldOutBatches]:
    """This rank's endless training micro-batches from `sequences_done` on, and the
    held-out batches (the same on every rank)."""
    import ray.train

    directory, micro_batch, recipe = Path(config.data), config.recipe.micro_batch_size, config.recipe
    special = SpecialIds.of(Tokenizer.from_file(str(directory / TOKENIZER)))
    train = shard_batches(ray.train.get_dataset_shard(TRAIN_DATASET), micro_batch, special,
                          config.model.vocab_size, recipe.mask_rate, recipe.seed, rank,
                          skip=sequences_done // (micro_batch * world_size))
    held_out = _read_rows(directory / EVAL_FILE, config.eval_sequences)
    held_out_batches = HeldOutBatches(held_out, special, config.model.vocab_size, config.eval_mask_rate,
                                      recipe.seed)
    return train, held_out_batches


def _read_rows(path: Path, limit: int) -> np.ndarray:
    """The first `limit` held-out sequences, without reading the rest of the file."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=limit, columns=[INPUT_IDS]):
        return sequence_rows(pa.Table.from_batches([batch]))
    raise ValueError(f"{path} holds no held-out sequences")
