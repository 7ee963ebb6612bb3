"""A global sort whose memory does not grow with the data: sorted runs, then k-way merges.

Ray Data's `sort` moves every row through the object store at once (spilling past its
capacity), so its memory grows with the corpus. Here each part, small enough to sort in
memory, becomes a sorted Parquet run in small row groups, and the runs are merged while
streaming: a merge holds one row group of each of its runs.

A merge of many runs is slow as well as small-grained: runs from a shuffled corpus
interleave, so each step of the merge can emit little more than one row group, and every
step touches every run; the work grows with the square of the number of runs. Merges
therefore take at most MERGE_FAN_IN runs; more runs are first merged in groups into longer
runs (`merge_groups`), as many passes as it takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MERGE_BUFFER_BYTES = 16 << 20  # what a merge holds of all its runs together
MERGE_FAN_IN = 16
MIN_ROWS_PER_GROUP = 64


def rows_per_group(row_bytes: int) -> int:
    """Rows in a run's row group, so that one group of each run a merge takes fits in
    MERGE_BUFFER_BYTES."""
    return max(MIN_ROWS_PER_GROUP, MERGE_BUFFER_BYTES // (MERGE_FAN_IN * max(row_bytes, 1)))


def merge_groups(runs: Sequence[Path], fan_in: int) -> list[list[Path]]:
    """Consecutive groups of at most `fan_in` runs, each to be merged into one longer run."""
    return [list(runs[start:start + fan_in]) for start in range(0, len(runs), fan_in)]


def merge_to_run(runs: Sequence[Path], keys: Sequence[str], path: Path, group_rows: int) -> None:
    """Merge sorted runs into one run at `path`, in row groups of `group_rows` (no file when
    the runs hold no rows)."""
    merged = slices(merge_runs(runs, keys), itertools.repeat(group_rows))
    first = next(merged, None)
    if first is None:
        return
    with pq.ParquetWriter(path, first.schema) as writer:
        for table in itertools.chain([first], merged):
            writer.write_table(table, row_group_size=group_rows)


def write_run(table: pa.Table, keys: Sequence[str], path: Path, group_rows: int) -> None:
    """`table` sorted by `keys` (ascending), in row groups of `group_rows` for the merge."""
    pq.write_table(table.sort_by([(key, "ascending") for key in keys]), path, row_group_size=group_rows)


def merge_runs(paths: Sequence[Path], keys: Sequence[str]) -> Iterator[pa.Table]:
    """The rows of runs (each sorted by `keys`) as one sorted stream of tables, holding one
    row group of each run at a time.

    Vectorised: the smallest last key among the row groups at the runs' heads bounds
    everything still unread, so all their rows up to it go out in one sort, and the row
    groups that ended at it are replaced by their runs' next."""
    readers = [row_groups(path) for path in paths]
    heads = {run: table for run, reader in enumerate(readers) if (table := next(reader, None)) is not None}
    while heads:
        bound = min(_key(table, table.num_rows - 1, keys) for table in heads.values())
        out = []
        for run, table in list(heads.items()):
            emitted = _rows_up_to(table, bound, keys)
            out.append(table.slice(0, emitted))
            if emitted < table.num_rows:
                heads[run] = table.slice(emitted)
            elif (following := next(readers[run], None)) is not None:
                heads[run] = following
            else:
                del heads[run]
        merged = pa.concat_tables(out)
        columns = [merged.column(key).to_numpy() for key in reversed(keys)]
        yield merged.take(np.lexsort(columns))


def row_groups(path: Path, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file's non-empty row groups one at a time (pyarrow's batch iterator reads
    ahead, up to the whole file)."""
    file = pq.ParquetFile(path)
    for index in range(file.num_row_groups):
        table = file.read_row_group(index, columns=columns, use_threads=False)
        if table.num_rows:
            yield table


def _key(table: pa.Table, row: int, keys: Sequence[str]) -> tuple:
    return tuple(table.column(key)[row].as_py() for key in keys)


def _rows_up_to(table: pa.Table, bound: tuple, keys: Sequence[str]) -> int:
    """How many leading rows of a sorted table have keys <= bound."""
    below, equal = np.zeros(table.num_rows, bool), np.ones(table.num_rows, bool)
    for key, limit in zip(keys, bound, strict=True):
        values = table.column(key).to_numpy()
        below |= equal & (values < limit)
        equal &= values == limit
    return int(np.count_nonzero(below | equal))


def slices(tables: Iterator[pa.Table], sizes: Iterator[int]) -> Iterator[pa.Table]:
    """Consecutive tables of `next(sizes)` rows from a stream of tables; the last may be
    shorter, and a size of 0 yields an empty table."""
    pending, pending_rows, size = [], 0, next(sizes)
    for table in tables:
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size)
            pending, pending_rows, size = [whole.slice(size)], pending_rows - size, next(sizes)
    if pending_rows:
        yield pa.concat_tables(pending)
