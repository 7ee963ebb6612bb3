"""How training data reaches the workers, top to bottom: the driver turns a prepared
directory (`crammit data prepare`) into Ray Train datasets (`ingest`); each worker then
streams its own shard of the training sequences (`ray.train.get_dataset_shard`) as masked
micro-batches, and reads the same held-out sequences from `eval.parquet` (`training_data`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from crammit.config import TrainConfig
from crammit.data.layout import EVAL_FILE, INPUT_IDS, TOKENIZER, read_manifest, sequence_rows, shard_paths
from crammit.data.loader import HeldOutBatches, MaskedBatch, shard_batches
from crammit.data.tokenizer import SpecialIds

TRAIN_DATASET = "train"  # the name Ray Train's `datasets` and `get_dataset_shard` share
# Held training sets leave the rest of the object store to the blocks Ray Data streams.
OBJECT_STORE_SHARE = 0.25


def ingest(data: Path, object_store_share: float = OBJECT_STORE_SHARE) -> dict:
    """TorchTrainer arguments that stream a prepared directory: each worker reads a
    disjoint shard (`get_dataset_shard`), in the same order on every execution, so a
    resumed run that skips the micro-batches it consumed continues where it stopped.

    Training sequences that take at most `object_store_share` of the object store are read
    once into it: otherwise each epoch starts by reading the files again, a pause of
    seconds that a small corpus, with an epoch every step or two, pays every step or two."""
    import ray
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True  # the splitter then hands out blocks in order, ignoring locality
    manifest = read_manifest(data)
    sequences = ray.data.read_parquet([str(path) for path in shard_paths(data, manifest)])
    sequences.context.execution_options.preserve_order = True  # local mode reads it unsplit
    if training_bytes(manifest) <= object_store_share * ray.cluster_resources().get("object_store_memory", 0):
        sequences = sequences.materialize()
    # Each epoch is an execution of this dataset: its progress bars would bury the run's own.
    sequences.context.enable_progress_bars = False
    return {"datasets": {TRAIN_DATASET: sequences}, "dataset_config": DataConfig(execution_options=options)}


def training_bytes(manifest: dict) -> int:
    """The size of a prepared directory's training sequences as int32 token ids."""
    return manifest["train_sequences"] * manifest["config"]["seq_len"] * np.dtype(np.int32).itemsize


def training_data(
    config: TrainConfig, rank: int, world_size: int, sequences_done: int,
) -> tuple[Iterator[MaskedBatch], HeldOutBatches]:
    """This rank's endless training micro-batches from `sequences_done` on, and the
    held-out batches (the same on every rank)."""
    import ray.train

    micro_batch, recipe = config.recipe.micro_batch_size, config.recipe
    special = special_ids(config)
    train = shard_batches(ray.train.get_dataset_shard(TRAIN_DATASET), micro_batch, special,
                          config.model.vocab_size, recipe.mask_rate, recipe.seed, rank,
                          skip=sequences_done // (micro_batch * world_size))
    return train, held_out_set(config, special)


def special_ids(config: TrainConfig) -> SpecialIds:
    """The special tokens of the run's prepared directory's tokenizer."""
    return SpecialIds.of(Tokenizer.from_file(str(Path(config.data) / TOKENIZER)))


def held_out_set(config: TrainConfig, special: SpecialIds) -> HeldOutBatches:
    """The run's held-out sequences, masked once: what every evaluation of the run (and a
    benchmark that compares with it) measures its loss on."""
    rows = _read_rows(Path(config.data) / EVAL_FILE, config.max_eval_sequences)
    return HeldOutBatches(rows, special, config.model.vocab_size, config.eval_mask_rate, config.recipe.seed)


def _read_rows(path: Path, limit: int) -> np.ndarray:
    """The first `limit` held-out sequences, without reading the rest of the file."""
    batches = pq.ParquetFile(path).iter_batches(batch_size=limit, columns=[INPUT_IDS])
    # `prepare_run` refuses a directory without held-out sequences before any worker starts.
    return sequence_rows(pa.Table.from_batches([next(batches)]))
