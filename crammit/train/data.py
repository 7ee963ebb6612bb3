"""What a worker trains and evaluates on: the run's interim data, or a prepared directory.

A prepared directory (`crammit data prepare`) streams through Ray Data: each worker reads
its own shard via `ray.train.get_dataset_shard`; held-out sequences come from its
`eval.parquet`. Without one, the run directory's in-memory packed sequences are used.
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
from crammit.data.loader import MaskedBatch, MLMBatches, shard_batches
from crammit.data.prepare import PreparedData
from crammit.data.tokenizer import SpecialIds
from crammit.train import rundir

TRAIN_DATASET = "train"  # the name Ray Train's `datasets` and `get_dataset_shard` share


def training_data(
    config: TrainConfig, rank: int, world_size: int, sequences_done: int,
) -> tuple[Iterator[MaskedBatch], MLMBatches]:
    """This rank's endless training micro-batches from `sequences_done` on, and the
    held-out batches (the same on every rank)."""
    micro_batch, recipe = config.recipe.micro_batch_size, config.recipe
    if config.data:
        directory = Path(config.data)
        special = SpecialIds.of(Tokenizer.from_file(str(directory / TOKENIZER)))
        import ray.train

        train = shard_batches(ray.train.get_dataset_shard(TRAIN_DATASET), micro_batch, special,
                              config.model.vocab_size, recipe.mask_rate, recipe.seed, rank,
                              skip=sequences_done // (micro_batch * world_size))
        held_out = _read_rows(directory / EVAL_FILE, config.eval_sequences)
    else:
        prepared = PreparedData(Path(config.run_dir) / rundir.DATA_DIR)
        special = SpecialIds.of(prepared.tokenizer())
        in_memory = MLMBatches(prepared.train_sequences(), special, config.model.vocab_size,
                               recipe.mask_rate, recipe.seed)
        train = in_memory.stream(sequences_done, micro_batch, rank, world_size)
        held_out = prepared.eval_sequences()[: config.eval_sequences]
    evaluation = MLMBatches(held_out, special, config.model.vocab_size, recipe.mask_rate, recipe.seed,
                            shuffle=False)
    return train, evaluation


def _read_rows(path: Path, limit: int) -> np.ndarray:
    """The first `limit` held-out sequences, without reading the rest of the file."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=limit, columns=[INPUT_IDS]):
        return sequence_rows(pa.Table.from_batches([batch]))
    raise ValueError(f"{path} holds no held-out sequences")
