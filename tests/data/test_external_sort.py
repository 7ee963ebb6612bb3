import numpy as np
import pyarrow as pa

from crammit.data.external_sort import merge_runs, rows_per_group, write_run


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


def test_merge_buffers_shrink_as_runs_grow():
    assert rows_per_group(runs=1, row_bytes=528) > rows_per_group(runs=100, row_bytes=528) * 50
    assert rows_per_group(runs=10**6, row_bytes=528) == 64  # a floor, not zero


def test_runs_of_equal_keys_merge_completely(tmp_path):
    paths = [tmp_path / f"run-{index}.parquet" for index in range(3)]
    for index, path in enumerate(paths):
        part = pa.table({"key": [5] * 40, "payload": list(range(index * 40, index * 40 + 40))})
        write_run(part, ["key"], path, group_rows=7)
    merged = pa.concat_tables(merge_runs(paths, ["key"]))
    assert sorted(merged["payload"].to_pylist()) == list(range(120))
