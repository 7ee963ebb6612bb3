"""MLM batches from packed sequences: BERT's 80/10/10 masking, and two sources.

`shard_batches` streams a worker's Ray Data shard of a prepared directory; a resumed run
continues from one integer, the micro-batches consumed. `HeldOutBatches` serves the
held-out sequences from memory, masked once, so every evaluation at every worker count
sees the same inputs.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from crammit.config import MASK_INDEX_BITS, MASK_RANK_BITS
from crammit.data.layout import sequence_rows
from crammit.data.tokenizer import SpecialIds
from crammit.model.bert import IGNORE_INDEX

T = TypeVar("T")
PREFETCH_MICRO_BATCHES = 64  # hides an epoch change's pause behind this many micro-batches of work


@dataclass(frozen=True)
class MaskedBatch:
    input_ids: torch.Tensor  # (rows, seq_len) int64, masked tokens replaced
    labels: torch.Tensor  # original token at masked positions, IGNORE_INDEX elsewhere

    @property
    def num_masked(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def mask_tokens(
    sequences: torch.Tensor, special: SpecialIds, vocab_size: int, mask_rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `mask_rate` of the non-special tokens; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (input_ids, labels)."""
    chosen = torch.rand(sequences.shape, generator=generator) < mask_rate
    chosen &= ~torch.isin(sequences, torch.tensor([special.pad, special.cls, special.sep]))
    action = torch.rand(sequences.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, sequences.shape, generator=generator)
    input_ids = torch.where(chosen & (action < 0.8), special.mask, sequences)
    input_ids = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, input_ids)
    labels = torch.where(chosen, sequences, IGNORE_INDEX)
    return input_ids, labels


class HeldOutBatches:
    """In-memory sequences masked once, each row by a generator seeded with `seed`: every
    evaluation, and every worker count, sees the same inputs and labels."""

    def __init__(self, sequences: np.ndarray, special: SpecialIds, vocab_size: int, mask_rate: float,
                 seed: int) -> None:
        if len(sequences) == 0:
            raise ValueError("no held-out sequences to evaluate on")
        rows = torch.from_numpy(np.asarray(sequences, dtype=np.int64))
        generator = torch.Generator().manual_seed(seed)
        self.input_ids, self.labels = mask_tokens(rows, special, vocab_size, mask_rate, generator)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, start: int, micro_batch: int, rank: int, world_size: int) -> MaskedBatch:
        """Rank `rank`'s slice of the data-parallel micro-batch of global rows
        `start .. start + micro_batch*world_size` (wrapping around)."""
        first = start + rank * micro_batch
        return self._rows(torch.arange(first, first + micro_batch) % len(self))

    def rank_batches(self, micro_batch: int, rank: int, world_size: int) -> list[MaskedBatch]:
        """Every row once across the ranks: this rank's rows (every `world_size`-th, from
        `rank`) in micro-batches of at most `micro_batch`. Every rank gets the same number
        of micro-batches, so forward passes with collectives (ZeRO-3) stay in step; a rank
        whose rows run out first gets one row with nothing to predict."""
        rank_rows = torch.arange(len(self))[rank::world_size]
        passes = math.ceil(math.ceil(len(self) / world_size) / micro_batch)
        batches = [self._rows(rank_rows[k * micro_batch:(k + 1) * micro_batch]) for k in range(passes)]
        return [batch if len(batch.input_ids) else self._nothing_to_predict() for batch in batches]

    def _rows(self, index: torch.Tensor) -> MaskedBatch:
        return MaskedBatch(self.input_ids[index], self.labels[index])

    def _nothing_to_predict(self) -> MaskedBatch:
        return MaskedBatch(self.input_ids[:1], torch.full_like(self.labels[:1], IGNORE_INDEX))


def shard_batches(
    shard, micro_batch: int, special: SpecialIds, vocab_size: int, mask_rate: float, seed: int,
    rank: int, skip: int = 0,
) -> Iterator[MaskedBatch]:
    """A worker's micro-batches from its Ray Data shard (`ray.train.get_dataset_shard`),
    epoch after epoch; the first `skip` micro-batches are read and dropped (resume).
    Masks are seeded by (seed, rank, micro-batch index), so a resume reproduces them."""
    tables = prefetched(_epochs(shard, micro_batch), PREFETCH_MICRO_BATCHES)
    for index, table in enumerate(tables):
        if index >= skip:
            rows = sequence_rows(table)
            generator = torch.Generator().manual_seed(mask_seed(seed, rank, index))
            yield MaskedBatch(*mask_tokens(torch.from_numpy(rows.astype(np.int64)), special,
                                           vocab_size, mask_rate, generator))


def mask_seed(seed: int, rank: int, index: int) -> int:
    """The generator seed of micro-batch `index` of worker `rank` in a run seeded `seed`."""
    return (seed << (MASK_RANK_BITS + MASK_INDEX_BITS)) + (rank << MASK_INDEX_BITS) + index


def _epochs(shard, micro_batch: int) -> Iterator:
    while True:
        produced = False
        for table in shard.iter_batches(batch_size=micro_batch, batch_format="pyarrow", drop_last=True):
            produced = True
            yield table
        if not produced:
            raise ValueError("this worker's data shard is smaller than one micro-batch")


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead, so a pause in the
    producer (Ray Data starting the next epoch's execution takes a second or more) does
    not stall the consumer. Closing this iterator stops the thread and closes `items`."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as error:  # handed to the consumer, which raises it
            buffer.put(_Failure(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = buffer.get()
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
