"""Fit tables: what cannot be read is one error, what cannot be fitted is dropped and named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crammit.errors import CrammitError
from crammit.study.spec import TrialStatus
from crammit.study.table import fit_rows, read_table


def test_files_that_are_not_tables_are_one_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    header = tmp_path / "header.csv"
    header.write_text("params,tokens,loss\n")
    for path, fragment in [(empty, "is empty"), (binary, "is not text"), (broken, "not a readable parquet"),
                           (header, "holds no rows"), (tmp_path / "absent.csv", "does not exist"),
                           (tmp_path / "table.json", "expected a .csv or .parquet file")]:
        with pytest.raises(CrammitError, match=fragment) as error:
            read_table(path)
        assert "\n" not in str(error.value)


def test_rows_that_cannot_be_fitted_are_dropped_and_named():
    table = pd.DataFrame({"params": [1e6, 0, 2e6, "x", 3e6, 4e6],
                          "tokens": [1e9, 1e9, 1e9, 1e9, 1e9, 1e9],
                          "loss": [4.0, 3.9, np.nan, 3.5, np.inf, -1.0]})
    rows = fit_rows(table)
    assert rows.dropped == ("params 0 at row 2", "loss NaN at row 3", "params 'x' at row 4",
                            "loss inf at row 5", "loss -1 at row 6")
    assert rows.rows["params"].tolist() == [1e6] and rows.flops_source.startswith("6·N·D")
    assert rows.rows["flops"].tolist() == [6 * 1e6 * 1e9] and rows.rows["setting"].tolist() == ["all"]


def test_study_rows_are_named_by_trial_and_unfinished_ones_counted():
    table = pd.DataFrame({"trial": ["a", "b", "c"], "params": [1e6, 2e6, 3e6], "tokens": [1e9] * 3,
                          "loss": [4.0, np.nan, 3.0], "flops": [1e16, 2e16, 3e16],
                          "status": [TrialStatus.OK.value, TrialStatus.OK.value, TrialStatus.FAILED.value]})
    rows = fit_rows(table)
    assert rows.dropped == ("loss NaN at trial b",) and rows.unfinished == 1 and len(rows.rows) == 1


def test_missing_and_non_numeric_columns_are_one_error():
    with pytest.raises(CrammitError, match=r"lacks column\(s\) tokens, loss: it needs one row per finished"):
        fit_rows(pd.DataFrame({"params": [1e6], "flops": [1e15]}))
    with pytest.raises(CrammitError, match="column loss holds no numbers \\(its first value is 'low'\\)"):
        fit_rows(pd.DataFrame({"params": [1e6, 2e6], "tokens": [1e9, 1e9], "loss": ["low", "lower"]}))
