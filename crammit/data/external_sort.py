"""A global sort whose memory does not grow with the data: sorted runs, then a k-way merge.

Ray Data's `sort` moves every row through the object store at once (spilling past its
capacity), so its memory grows with the corpus. Here each part, small enough to sort in
memory, becomes a sorted Parquet run, and the runs are merged while streaming: the merge
holds one small batch of each run, and writing runs with row groups of that size keeps
reading them from loading more.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MERGE_BUFFER_BYTES = 32 << 20  # what the merge holds of all runs together
MIN_ROWS_PER_BATCH = 64


def rows_per_batch(runs: int, row_bytes: int) -> int:
    """Rows the merge reads from a run at a time, so that all runs fit in MERGE_BUFFER_BYTES."""
    return max(MIN_ROWS_PER_BATCH, MERGE_BUFFER_BYTES // max(runs * row_bytes, 1))


def write_run(table: pa.Table, keys: Sequence[str], path: Path, batch_rows: int) -> None:
    """`table` sorted by `keys` (ascending), in row groups of `batch_rows` for the merge."""
    pq.write_table(table.sort_by([(key, "ascending") for key in keys]), path, row_group_size=batch_rows)


def merge_runs(paths: Sequence[Path], keys: Sequence[str], batch_rows: int) -> Iterator[pa.Table]:
    """The rows of runs (each sorted by `keys`) as one sorted stream of tables of up to
    `batch_rows` rows (the runs' row groups should be no larger). Equal keys come in run
    order."""
    merged = heapq.merge(*(_keyed_rows(pq.ParquetFile(path), keys, run) for run, path in enumerate(paths)))
    while chunk := list(itertools.islice(merged, batch_rows)):
        sources: dict[int, tuple[int, pa.Table]] = {}  # id(group) -> (its first row, group)
        rows = 0
        for *_, group in chunk:
            if id(group) not in sources:
                sources[id(group)] = (rows, group)
                rows += group.num_rows
        positions = [sources[id(group)][0] + row for *_, row, group in chunk]
        yield pa.concat_tables([group for _, group in sources.values()]).take(positions)


def _keyed_rows(run: pq.ParquetFile, keys: Sequence[str], index: int) -> Iterator[tuple]:
    """(key values..., run index, row, row group) for each row of a run, one row group read
    at a time (a batch iterator would read ahead); the run index and row make every tuple
    distinct, so row groups are never compared."""
    for group_index in range(run.num_row_groups):
        group = run.read_row_group(group_index)
        columns = [group.column(key).to_pylist() for key in keys]
        for row, values in enumerate(zip(*columns, strict=True)):
            yield (*values, index, row, group)
