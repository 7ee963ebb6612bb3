import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crammit.data.external_sort import (
    MERGE_BUFFER_BYTES,
    MERGE_FAN_IN,
    merge_groups,
    merge_runs,
    merge_to_run,
    rows_per_group,
    slices,
    write_run,
)


def test_merging_sorted_runs_gives_the_global_order(tmp_path):
    rng = np.random.default_rng(0)
    parts = [pa.table({"key": rng.integers(0, 50, size), "tie": rng.integers(0, 10**9, size),
                       "payload": rng.integers(0, 10**6, size)}) for size in (300, 1, 0, 257)]
    paths = []
    for index, part in enumerate(parts):
        paths.append(tmp_path / f"run-{index}.parquet")
        write_run(part, ["key", "tie"], paths[-1], group_rows=16)
    merged = pa.concat_tables(merge_runs(paths, ["key", "tie"]))
    expected = pa.concat_tables(parts).sort_by([("key", "ascending"), ("tie", "ascending")])
    assert merged.to_pydict() == expected.to_pydict()


def test_one_row_group_of_each_run_of_a_merge_fits_the_buffer():
    assert rows_per_group(row_bytes=528) * 528 * MERGE_FAN_IN <= MERGE_BUFFER_BYTES
    assert rows_per_group(row_bytes=10**9) == 64  # a floor, not zero


def test_merging_in_passes_of_two_runs_gives_the_global_order(tmp_path):
    rng = np.random.default_rng(1)
    parts = [pa.table({"key": rng.integers(0, 30, size), "tie": rng.integers(0, 10**9, size)})
             for size in (90, 1, 64, 40, 7)]
    runs = []
    for index, part in enumerate(parts):
        runs.append(tmp_path / f"run-{index}.parquet")
        write_run(part, ["key", "tie"], runs[-1], group_rows=8)
    passes = 0
    while len(runs) > 2:
        passes += 1
        groups = merge_groups(runs, fan_in=2)
        assert [len(group) for group in groups] == [2] * (len(runs) // 2) + [1] * (len(runs) % 2)
        runs = [tmp_path / f"pass-{passes}-{index}.parquet" for index in range(len(groups))]
        for group, run in zip(groups, runs, strict=True):
            merge_to_run(group, ["key", "tie"], run, group_rows=8)
            assert {pq.ParquetFile(run).metadata.row_group(i).num_rows
                    for i in range(pq.ParquetFile(run).num_row_groups - 1)} <= {8}
    merged = pa.concat_tables(merge_runs(runs, ["key", "tie"]))
    expected = pa.concat_tables(parts).sort_by([("key", "ascending"), ("tie", "ascending")])
    assert passes == 2 and merged.to_pydict() == expected.to_pydict()


def test_slices_cut_a_stream_of_tables_into_the_sizes_asked():
    tables = (pa.table({"x": list(range(start, start + n))}) for start, n in ((0, 5), (5, 1), (6, 9)))
    cut = list(slices(tables, iter([0, 4, 4, 100])))
    assert [table.num_rows for table in cut] == [0, 4, 4, 7]
    assert pa.concat_tables(cut)["x"].to_pylist() == list(range(15))


def test_runs_of_equal_keys_merge_completely(tmp_path):
    paths = [tmp_path / f"run-{index}.parquet" for index in range(3)]
    for index, path in enumerate(paths):
        part = pa.table({"key": [5] * 40, "payload": list(range(index * 40, index * 40 + 40))})
        write_run(part, ["key"], path, group_rows=7)
    merged = pa.concat_tables(merge_runs(paths, ["key"]))
    assert sorted(merged["payload"].to_pylist()) == list(range(120))
