"""The rows a scaling law is fitted on: a study's finished trials, or any CSV/Parquet table
with params, tokens and loss, checked and cleaned, with every row left out named."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crammit.errors import CrammitError
from crammit.study.spec import TrialStatus

REQUIRED_COLUMNS = ("tokens", "loss")  # and the parameter count FitOptions names
DEFAULT_SETTING = "all"


@dataclass(frozen=True)
class FitRows:
    """Rows a law can be fitted to (positive, finite `params`, `tokens`, `loss`, `flops`;
    `setting` filled), what was dropped and why, and how many unfinished runs were left out."""

    rows: pd.DataFrame
    dropped: tuple[str, ...]  # e.g. "loss NaN at row 4"
    unfinished: int  # rows whose status is not "ok"
    flops_source: str  # where `flops` came from


def study_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """A study's trials table as a fit table: its final held-out loss as `loss`."""
    return trials.rename(columns={"eval_loss": "loss"})


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a table, or one CrammitError saying why it is not one."""
    readers: dict[str, Callable[[Path], pd.DataFrame]] = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
    kind = path.suffix.lower()
    if kind not in readers:
        raise CrammitError(f"cannot read study table {path}: expected a .csv or .parquet file")
    if not path.is_file():
        raise CrammitError(f"study table {path} does not exist")
    with path.open("rb") as file:
        binary = b"\0" in file.read(8192)
    if kind == ".csv" and binary:
        raise CrammitError(f"study table {path} is not text: a .csv file must be UTF-8 CSV")
    try:
        table = readers[kind](path)
    except pd.errors.EmptyDataError:
        raise CrammitError(f"study table {path} is empty") from None
    except UnicodeDecodeError:
        raise CrammitError(f"study table {path} is not text: a .csv file must be UTF-8 CSV") from None
    except (pd.errors.ParserError, ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CrammitError(f"study table {path} is not a readable {kind[1:]} table: {reason}") from None
    if table.empty:
        raise CrammitError(f"study table {path} holds no rows")
    return table


def fit_rows(table: pd.DataFrame, params_column: str = "params") -> FitRows:
    """The rows of `table` a law can be fitted to. Rows whose status is not "ok" (where
    recorded) are unfinished runs; a row with a non-numeric, non-finite or non-positive
    value is dropped and named. `params_column` is the parameter count used as N."""
    missing = [column for column in (params_column, *REQUIRED_COLUMNS) if column not in table.columns]
    if missing:
        raise CrammitError(
            f"study table lacks column(s) {', '.join(missing)}: it needs one row per finished run "
            f"with {params_column}, tokens and loss (optional: flops, setting)")
    finished = (table["status"].eq(TrialStatus.OK.value) if "status" in table.columns
                else pd.Series(True, index=table.index))
    rows = table[finished].copy()
    labels = _row_labels(table)[finished.to_numpy()]
    checked = [params_column, *REQUIRED_COLUMNS, *(["flops"] if "flops" in table.columns else [])]
    numbers = {column: pd.to_numeric(rows[column], errors="coerce") for column in checked}
    for column in checked:
        if len(rows) and numbers[column].isna().all() and rows[column].notna().any():
            raise CrammitError(f"study table column {column} holds no numbers (its first value is "
                               f"{rows[column].dropna().iloc[0]!r})")
    reasons = [_problem(rows[column], numbers[column], column) for column in checked]
    problem = pd.concat(reasons, axis=1).bfill(axis=1).iloc[:, 0] if len(rows) else pd.Series(dtype=object)
    dropped = tuple(f"{reason} at {label}" for reason, label in zip(problem, labels, strict=True)
                    if isinstance(reason, str))
    for column in checked:
        rows[column] = numbers[column]
    rows = rows[problem.isna().to_numpy()] if len(rows) else rows
    rows = rows.assign(params=rows[params_column])
    if "flops" in table.columns:
        source = "the table's flops column (analytic training FLOPs for crammit studies)"
    else:
        rows["flops"] = 6 * rows["params"] * rows["tokens"]
        source = "6·N·D (the table has no flops column)"
    rows["setting"] = (rows["setting"].fillna(DEFAULT_SETTING).astype(str) if "setting" in rows
                       else DEFAULT_SETTING)
    return FitRows(rows.reset_index(drop=True), dropped, int((~finished).sum()), source)


def _row_labels(table: pd.DataFrame) -> np.ndarray:
    """How the output names a row: its trial where the table has one, else its 1-based row."""
    numbered = np.array([f"row {i + 1}" for i in range(len(table))], dtype=object)
    if "trial" not in table.columns:
        return numbered
    trials = table["trial"].astype("string")
    named = ("trial " + trials.fillna("")).to_numpy(dtype=object)
    return np.where(trials.notna().to_numpy(), named, numbered)


def _problem(raw: pd.Series, number: pd.Series, column: str) -> pd.Series:
    """Why each value cannot be fitted (None where it can): not a number, NaN, inf, or <= 0."""
    problem = pd.Series(None, index=raw.index, dtype=object)
    text = number.isna() & raw.notna() & ~raw.map(lambda value: isinstance(value, float))
    problem[text] = [f"{column} {value!r}" for value in raw[text]]
    problem[number.isna() & ~text] = f"{column} NaN"
    infinite = np.isinf(number.fillna(0))
    problem[infinite] = [f"{column} {value:g}" for value in number[infinite]]
    small = number.notna() & np.isfinite(number.fillna(0)) & (number <= 0)
    problem[small] = [f"{column} {value:g}" for value in number[small]]
    return problem
