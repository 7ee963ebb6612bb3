"""The Ray tasks of corpus preparation after tokenizing, the counts actor, and the
worker processes each stage runs in.

A module of its own so that the processes running these tasks import only what they
use: not Ray Data (`pipeline.py`), whose import would add memory and start-up time that
these tasks do not need to every one of them. One task passes over the content hashes to
find where each repeated document first occurs, one per file packs documents into
sequences keeping only first copies, one per part sorts it into a run, and merges
(`external_sort`) end in one that writes the shards a row group at a time.
"""

from __future__ import annotations

import ctypes
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from crammit.config import PrepareConfig, SequenceOrder
from crammit.data.external_sort import merge_runs, merge_to_run, row_groups, slices, write_run
from crammit.data.layout import EVAL_FILE, SHARD_PATTERN, sequence_rows, sequence_table
from crammit.data.stages import is_held_out, later_copies, pack, prevalence_scores, shuffle_keys
from crammit.data.tokenizer import SpecialIds
from crammit.io import atomic_path

HASH, IDS = "hash", "token_ids"  # the tokenized documents' columns
SPLIT, ORDER_KEY, TIE_KEY = "split", "order_key", "tie_key"
SORT_KEYS = [ORDER_KEY, TIE_KEY]
TRAIN, EVAL = "train", "eval"
HASH_PASS_BYTES = 32 << 20  # content hashes that exact deduplication holds at once
# What a pass over the hashes holds per document of its slice: the hash and its position.
HASH_PASS_BYTES_PER_DOCUMENT = np.dtype(np.uint64).itemsize + np.dtype(np.int64).itemsize
# What a run's row holds besides its token ids: its ORDER_KEY (float64) and TIE_KEY (int64).
RUN_KEY_BYTES = np.dtype(np.float64).itemsize + np.dtype(np.int64).itemsize
SHARD_ROW_GROUP_ROWS = 8192  # what the last merge holds of the shard it writes


def _workers_of_their_own(stage: str) -> dict:
    """A runtime environment for a stage's tasks. Ray pools worker processes by runtime
    environment, so the stage starts processes that ran nothing else, and the previous
    stage's, idle beyond Ray's one idle worker per CPU, exit with what their tokenizers
    and batches left behind; the label only tells the pools apart. Arrow's jemalloc pool
    because it hands freed memory back to the system where the default (mimalloc) keeps
    it for the process, so a worker's memory follows what its current task holds rather
    than the most any task held. The price is starting the processes once per stage,
    which only small corpora notice."""
    return {"env_vars": {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "CRAMMIT_WORKER_POOL": stage}}


RAY_DATA_WORKERS = _workers_of_their_own("ray-data")  # reading, tokenizing, near-duplicate buckets
TASK_WORKERS = _workers_of_their_own("tasks")  # the tasks below


# Without task events: Ray's GCS keeps one per call (up to 100,000), and there is a call
# per batch, so its memory would grow with the corpus.
@ray.remote(num_cpus=0, enable_task_events=False)
class StageCounts:
    """Counts of documents kept and dropped, reported by every batch wherever it runs."""

    def __init__(self) -> None:
        self.totals: Counter = Counter()

    def add(self, counts: dict) -> None:
        self.totals.update(counts)

    def get(self) -> dict:
        return dict(self.totals)


@ray.remote(runtime_env=TASK_WORKERS, num_returns=2)
def repeated_documents(paths: list[Path], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The content hashes that occur more than once (sorted), and the position of each
    one's first occurrence in input order. The hash column (8 bytes a document) is read
    in as many passes as keep each pass's slice of the hash space within HASH_PASS_BYTES,
    so this holds no more whatever the corpus's size. A task, not the driver: the
    driver's heap would keep what the passes freed."""
    passes = max(1, _ceil_div(int(starts[-1]) * HASH_PASS_BYTES_PER_DOCUMENT, HASH_PASS_BYTES))
    found_hashes, found_positions = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for slice_index in range(passes):
        hashes, positions = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        for path, start in zip(paths, starts[:-1], strict=True):
            column = pq.read_table(path, columns=[HASH])[HASH].to_numpy()
            rows = np.flatnonzero(column % passes == slice_index)
            hashes.append(column[rows])
            positions.append(start + rows)
        values, first, occurrences = np.unique(np.concatenate(hashes), return_index=True, return_counts=True)
        found_hashes.append(values[occurrences > 1])
        found_positions.append(np.concatenate(positions)[first[occurrences > 1]])
    hashes = np.concatenate(found_hashes)
    order = np.argsort(hashes)
    _return_freed_memory()
    return hashes[order], np.concatenate(found_positions)[order]


@ray.remote(runtime_env=TASK_WORKERS)
def pack_file(paths: list[Path], starts: np.ndarray, index: int, near: np.ndarray, repeated: np.ndarray,
               first_positions: np.ndarray, special: SpecialIds, config: PrepareConfig,
               out: Path) -> tuple[dict, np.ndarray]:
    """Pack the batches of documents that begin in file `index` into part files, keeping a
    repeated document only at its first position; returns their counts and token counts."""
    totals: Counter = Counter()
    token_counts = np.zeros(config.vocab_size, np.int64)

    def packed() -> Iterator[pa.Table]:
        nonlocal token_counts
        for position, batch in _document_batches(paths, starts, index, config.documents_per_batch):
            hashes = batch[HASH].to_numpy()
            positions = position + np.arange(len(hashes))
            is_near = np.isin(hashes, near)
            is_later_copy = later_copies(hashes, positions, repeated, first_positions)
            keep = ~is_near & ~is_later_copy
            totals.update({"dropped_near_duplicates": int(is_near.sum()),
                           "dropped_duplicates": int((is_later_copy & ~is_near).sum())})
            rows, counts = _pack_batch(batch.filter(pa.array(keep)), special, config)
            totals.update(counts)
            token_counts += np.bincount(rows[TRAIN].ravel(), minlength=config.vocab_size)
            yield pa.concat_tables(sequence_table(split_rows).append_column(
                SPLIT, pa.repeat(pa.scalar(split), len(split_rows))) for split, split_rows in rows.items())

    for part_index, part in enumerate(slices(packed(), itertools.repeat(config.sequences_per_shard))):
        pq.write_table(part, out / f"{paths[index].stem}-{part_index:05d}.parquet")
    _return_freed_memory()
    return dict(totals), token_counts


def _document_batches(paths: list[Path], starts: np.ndarray, index: int,
                      rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The batches of `rows` documents, at positions that are multiples of `rows` in the
    whole stage, that begin in file `index` (the last reads on into the next files), one
    row group at a time; each with its first position. Batches, and so what packing drops
    at their ends, do not depend on how Ray Data cut the stage into files and row groups:
    on the cluster's size, say."""
    start, end = int(starts[index]), int(starts[index + 1])
    first = _ceil_div(start, rows) * rows  # the first multiple of `rows` at or after `start`
    if first >= end:
        return
    groups = itertools.chain.from_iterable(row_groups(path, [HASH, IDS]) for path in paths[index:])
    batches = slices(groups, itertools.chain([first - start], itertools.repeat(rows)))
    next(batches)  # the rows before `first`, which the previous file's last batch packs
    # The positions first: zip stops on them without reading a batch beyond this file's.
    yield from zip(range(first, end, rows), batches, strict=False)


def _pack_batch(table: pa.Table, special: SpecialIds, config: PrepareConfig) -> tuple[dict, dict]:
    """Pack one batch of documents into training and held-out sequences, by split
    (documents are held out by content hash, so are their sequences); and the counts."""
    held_out = is_held_out(table[HASH].to_numpy(), config.eval_fraction)
    token_ids = table[IDS].combine_chunks()
    rows = {}
    for split, members in ((TRAIN, ~held_out), (EVAL, held_out)):
        documents = token_ids.filter(pa.array(members))
        offsets = np.asarray(documents.offsets)
        rows[split] = pack(np.asarray(documents.flatten()), offsets - offsets[0], config.seq_len,
                           special.cls, special.sep)
    document_tokens = (pc.sum(pc.list_value_length(token_ids)).as_py() or 0) + table.num_rows  # with [SEP]
    packed_tokens = sum(len(split_rows) for split_rows in rows.values()) * (config.seq_len - 1)
    counts = {"documents_packed": table.num_rows, "document_tokens": document_tokens,
              "tokens_dropped_packing": document_tokens - packed_tokens,
              **{f"sequences_{split}": len(split_rows) for split, split_rows in rows.items()}}
    return rows, counts


@ray.remote(runtime_env=TASK_WORKERS)
def sort_run(part: Path, token_counts: Path, config: PrepareConfig, group_rows: int, run: Path) -> None:
    table = pq.read_table(part)
    rows = sequence_rows(table)
    prevalence = config.order == SequenceOrder.PREVALENCE
    order = -prevalence_scores(rows, np.log1p(np.load(token_counts))) if prevalence else np.zeros(len(rows))
    order[np.asarray(pc.equal(table[SPLIT], EVAL))] = -np.inf
    keyed = table.drop_columns([SPLIT]).append_column(ORDER_KEY, pa.array(order)).append_column(
        TIE_KEY, pa.array(shuffle_keys(rows, config.seed)))
    write_run(keyed, SORT_KEYS, run, group_rows)
    _return_freed_memory()


@ray.remote(runtime_env=TASK_WORKERS)
def merge_run(runs: list[Path], path: Path, group_rows: int) -> None:
    merge_to_run(runs, SORT_KEYS, path, group_rows)
    _return_freed_memory()


@ray.remote(runtime_env=TASK_WORKERS)
def write_merged(runs: list[Path], eval_rows: int, config: PrepareConfig,
                 out: Path) -> Iterator[tuple[str, int]]:
    """The last merge, in one task that writes what it merges (no shard passes through
    the object store): the held-out sequences, then each shard, a row group at a time;
    yields each shard's name and sequences as it is written. Files already there are kept
    (resume)."""
    ordered = (table.drop_columns(SORT_KEYS) for table in merge_runs(runs, SORT_KEYS))
    eval_groups, shard_groups = _row_group_sizes(eval_rows), _row_group_sizes(config.sequences_per_shard)
    groups = slices(ordered, itertools.chain(eval_groups, itertools.cycle(shard_groups)))
    schema = sequence_table(np.zeros((0, config.seq_len), np.int32)).schema
    _write_groups(out / EVAL_FILE, itertools.islice(groups, len(eval_groups)), schema)
    for index in itertools.count():
        first = next(groups, None)
        if first is None:
            return
        name, shard = SHARD_PATTERN.format(index), itertools.islice(groups, len(shard_groups) - 1)
        yield name, _write_groups(out / name, itertools.chain([first], shard), schema)


def _row_group_sizes(rows: int) -> list[int]:
    """A file of `rows` rows in row groups of SHARD_ROW_GROUP_ROWS (the last may be shorter)."""
    return [min(SHARD_ROW_GROUP_ROWS, rows - start) for start in range(0, rows, SHARD_ROW_GROUP_ROWS)]


def _write_groups(path: Path, groups: Iterator[pa.Table], schema: pa.Schema) -> int:
    """Write `groups` to `path` (atomically), a row group each, unless it exists; the rows.
    Each group is written as one chunk: Parquet's pages follow the chunks, which follow
    the runs a merge drew the rows from, and the bytes must not depend on those."""
    if path.exists():
        return sum(group.num_rows for group in groups)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for group in groups:
            writer.write_table(group.combine_chunks(), row_group_size=group.num_rows)
            rows += group.num_rows
    return rows


def _ceil_div(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded up, in exact integer arithmetic."""
    return -(-numerator // denominator)


def _return_freed_memory() -> None:
    """Hand what a task freed back to the system: Ray keeps the worker process for the next
    task, and the allocators (Arrow's pool, the C heap) would keep it for the process."""
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; other C libraries lack it
    if trim is not None:
        trim(0)
