import itertools
import threading

import numpy as np
import pytest
import torch

from crammit.config import MAX_SEED, MAX_WORKERS
from crammit.data.loader import HeldOutBatches, mask_seed, mask_tokens, prefetched
from crammit.data.tokenizer import SpecialIds
from crammit.model.bert import IGNORE_INDEX

SPECIAL = SpecialIds(pad=0, cls=2, sep=3, mask=4)
VOCAB = 1000


def sequences(rows: int = 40, seq_len: int = 128) -> np.ndarray:
    data = np.random.default_rng(0).integers(5, VOCAB, size=(rows, seq_len), dtype=np.int32)
    data[:, 0] = SPECIAL.cls
    data[:, 60] = SPECIAL.sep
    return data


def test_masking_follows_bert_80_10_10_at_the_given_rate():
    tokens = torch.from_numpy(sequences(400).astype(np.int64))
    inputs, labels = mask_tokens(tokens, SPECIAL, VOCAB, 0.25, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(tokens, torch.tensor([SPECIAL.cls, SPECIAL.sep]))
    assert not (chosen & ~maskable).any()  # special tokens are never masked
    rate = (chosen.sum() / maskable.sum()).item()
    assert abs(rate - 0.25) < 0.01
    became_mask = (inputs == SPECIAL.mask)[chosen].float().mean().item()
    kept = (inputs == tokens)[chosen].float().mean().item()
    assert abs(became_mask - 0.8) < 0.01
    assert abs(kept - 0.1) < 0.01 + 1 / VOCAB  # random replacements may hit the same token
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])


def test_held_out_rows_are_masked_once_and_for_all():
    loader, again = (HeldOutBatches(sequences(), SPECIAL, VOCAB, 0.25, seed=7) for _ in range(2))
    a, b = loader.batch(16, 8, 0, 1), again.batch(16, 8, 0, 1)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert torch.equal(loader.batch(20, 4, 0, 1).labels, a.labels[4:])  # a row's mask, not a batch's
    other_seed = HeldOutBatches(sequences(), SPECIAL, VOCAB, 0.25, seed=8).batch(16, 8, 0, 1)
    assert not torch.equal(a.labels, other_seed.labels)


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 16])
def test_evaluation_batches_cover_every_row_once_at_any_worker_count(workers):
    loader = HeldOutBatches(sequences(rows=10), SPECIAL, VOCAB, 0.25, seed=1)
    per_rank = [loader.rank_batches(4, rank, workers) for rank in range(workers)]
    assert len({len(batches) for batches in per_rank}) == 1  # ranks stay in step
    batches = [batch for rank_batches in per_rank for batch in rank_batches]
    rows = [labels for batch in batches for labels in batch.labels if (labels != IGNORE_INDEX).any()]
    assert len(rows) == 10
    assert sum(batch.num_masked for batch in batches) == int((loader.labels != IGNORE_INDEX).sum())
    assert all(len(batch.input_ids) <= 4 for batch in batches)


def test_workers_split_the_global_batch_one_worker_would_see():
    loader = HeldOutBatches(sequences(), SPECIAL, VOCAB, 0.25, seed=1)
    whole = loader.batch(8, 8, rank=0, world_size=1)
    halves = [loader.batch(8, 4, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([h.input_ids for h in halves]), whole.input_ids)
    assert torch.equal(torch.cat([h.labels for h in halves]), whole.labels)
    assert halves[0].num_masked + halves[1].num_masked == whole.num_masked


def test_held_out_batches_run_in_order_and_wrap_around():
    data = sequences(rows=10)
    loader = HeldOutBatches(data, SPECIAL, VOCAB, 0.25, seed=3)
    originals = lambda batch: torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids)  # noqa: E731
    np.testing.assert_array_equal(originals(loader.batch(0, 4, 0, 1)).numpy(), data[:4])
    np.testing.assert_array_equal(originals(loader.batch(8, 4, 0, 1)).numpy(), data[[8, 9, 0, 1]])


def test_prefetched_keeps_order_raises_the_producers_error_and_closes_its_source():
    assert list(itertools.islice(prefetched(iter(range(1000)), depth=4), 1000)) == list(range(1000))

    def failing():
        yield 1
        raise RuntimeError("read failed")

    stream = prefetched(failing(), depth=4)
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="read failed"):
        next(stream)

    closed = threading.Event()

    def endless():
        try:
            yield from itertools.count()
        finally:
            closed.set()

    stream = prefetched(endless(), depth=4)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.wait(timeout=5)


def test_mask_seeds_differ_for_every_micro_batch_rank_and_run_seed():
    corners = [(seed, rank, index) for seed in (0, 1, MAX_SEED - 1) for rank in (0, 1, MAX_WORKERS - 1)
               for index in (0, 1, (1 << 32) - 1)]
    seeds = [mask_seed(*corner) for corner in corners]
    assert len(set(seeds)) == len(corners) and max(seeds) < 1 << 64
