"""The Ray tasks after tokenizing: packing batches, shard bytes, and the processes they run in."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crammit.data import tasks
from crammit.data.external_sort import slices
from crammit.data.layout import sequence_table
from crammit.data.tasks import HASH, IDS


def test_packing_batches_do_not_depend_on_how_the_stage_is_cut_into_files(tmp_path):
    hashes = np.arange(23, dtype=np.uint64)
    documents = pa.table({HASH: hashes, IDS: pa.array([[int(h)] for h in hashes], pa.list_(pa.int32()))})

    def batches(file_rows: list[int], group_rows: int) -> list[list[int]]:
        layout = tmp_path / f"{'-'.join(map(str, file_rows))}-{group_rows}"
        layout.mkdir()
        starts = np.cumsum([0, *file_rows])
        paths = [layout / f"{index}.parquet" for index in range(len(file_rows))]
        for path, start, rows in zip(paths, starts[:-1], file_rows, strict=True):
            pq.write_table(documents.slice(start, rows), path, row_group_size=group_rows)
        found = [(position, batch[HASH].to_pylist()) for index in range(len(paths))
                 for position, batch in tasks._document_batches(paths, starts, index, rows=5)]
        assert [position for position, _ in found] == [hashes[0] for _, hashes in found]
        return [hashes for _, hashes in found]

    expected = [list(range(start, min(start + 5, 23))) for start in range(0, 23, 5)]
    assert batches([23], group_rows=23) == expected
    assert batches([3, 4, 0, 9, 7], group_rows=2) == expected
    assert batches([1] * 23, group_rows=1) == expected


def test_shard_bytes_do_not_depend_on_how_the_rows_are_chunked(tmp_path):
    # Large enough that Parquet's dictionary page fills up: where it falls back to plain
    # encoding follows the chunks written.
    rows = np.random.default_rng(0).integers(0, 30_000, (20_000, 128), dtype=np.int32)
    cuts = [0, 7, 1400, 5000, 5001, 12_000, 20_000]
    chunked = pa.concat_tables([sequence_table(rows[start:end]) for start, end in itertools.pairwise(cuts)])
    sizes = tasks._row_group_sizes(len(rows))
    for name, table in (("whole", sequence_table(rows)), ("chunked", chunked)):
        groups = slices(iter([table]), itertools.repeat(tasks.SHARD_ROW_GROUP_ROWS))
        assert tasks._write_groups(tmp_path / f"{name}.parquet", groups, table.schema) == len(rows)
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "chunked.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "whole.parquet").num_row_groups == len(sizes) > 1


def _worker_pid_and_arrow_pool() -> tuple[int, str]:
    return os.getpid(), pa.default_memory_pool().backend_name


def test_each_stage_runs_in_processes_of_its_own_with_arrows_jemalloc_pool(ray_session):
    # Ray pools worker processes by runtime environment: the tasks after tokenizing must
    # not inherit the tokenizing workers, nor either the default pool's.
    import ray

    probe = ray.remote(_worker_pid_and_arrow_pool)
    pools = {name: set(ray.get([probe.options(runtime_env=env).remote() for _ in range(6)]))
             for name, env in (("default", None), ("ray data", tasks.RAY_DATA_WORKERS),
                               ("tasks", tasks.TASK_WORKERS))}
    pids = {name: {pid for pid, _ in found} for name, found in pools.items()}
    assert not pids["default"] & pids["ray data"] and not pids["ray data"] & pids["tasks"]
    assert not pids["default"] & pids["tasks"]
    assert {pool for name in ("ray data", "tasks") for _, pool in pools[name]} == {"jemalloc"}


def test_tasks_do_not_import_ray_data():
    # Every fresh worker process would pay for it, in memory and start-up time.
    code = "import sys, crammit.data.tasks; print('ray.data' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
