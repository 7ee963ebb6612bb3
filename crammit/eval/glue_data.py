"""The GLUE tasks, and their train and dev sets read from the official GLUE TSV files
(`--glue-dir`) or from the Hugging Face hub (nyu-mll/glue). Test sets are left out: GLUE
hides their labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crammit.errors import CrammitError

if TYPE_CHECKING:
    import datasets

HF_DATASET = "nyu-mll/glue"
TRAIN = "train"  # the train set's key in load_task's result, and its TSV stem and hub split


@dataclass(frozen=True)
class DevSplit:
    """One dev set of a task: most have one, MNLI two (matched and mismatched genres)."""

    name: str  # its key in load_task's result and in results
    tsv_stem: str  # its file in the task's GLUE directory, less ".tsv"
    hf_split: str  # its split in nyu-mll/glue


DEV = DevSplit("dev", "dev", "validation")


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: where its texts and labels are in either source, and how it is scored."""

    name: str  # also its config name in nyu-mll/glue
    directory: str  # its directory in the official GLUE layout
    label_names: tuple[str, ...]  # the TSV label of each class id, in nyu-mll/glue's order; () if regression
    metrics: tuple[str, ...]  # the first is the one papers report
    text_columns: tuple[str, ...]  # TSV columns of text_a (and text_b)
    label_column: str  # TSV column of the label or score
    hf_text_columns: tuple[str, ...]  # nyu-mll/glue columns of text_a (and text_b); its label is "label"
    dev_splits: tuple[DevSplit, ...] = (DEV,)
    headerless_fields: tuple[str, ...] = ()  # names of the fields of files with no header line (CoLA)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def is_regression(self) -> bool:
        return not self.label_names


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, GlueTask] = {task.name: task for task in (
    GlueTask("cola", "CoLA", _BINARY, ("matthews",), ("sentence",), "label", ("sentence",),
             headerless_fields=("source", "label", "mark", "sentence")),
    GlueTask("sst2", "SST-2", _BINARY, ("accuracy",), ("sentence",), "label", ("sentence",)),
    GlueTask("mrpc", "MRPC", _BINARY, ("f1", "accuracy"), ("#1 String", "#2 String"), "Quality", _PAIR),
    GlueTask("stsb", "STS-B", (), ("pearson", "spearman"), _PAIR, "score", _PAIR),
    GlueTask("qqp", "QQP", _BINARY, ("f1", "accuracy"), ("question1", "question2"), "is_duplicate",
             ("question1", "question2")),
    GlueTask("mnli", "MNLI", ("entailment", "neutral", "contradiction"), ("accuracy",), _PAIR, "gold_label",
             ("premise", "hypothesis"),
             dev_splits=(DevSplit("matched", "dev_matched", "validation_matched"),
                         DevSplit("mismatched", "dev_mismatched", "validation_mismatched"))),
    GlueTask("qnli", "QNLI", _ENTAILMENT, ("accuracy",), ("question", "sentence"), "label",
             ("question", "sentence")),
    GlueTask("rte", "RTE", _ENTAILMENT, ("accuracy",), _PAIR, "label", _PAIR),
)}


def score_name(task: GlueTask, split: str, metric: str) -> str:
    """`f1`, or `matched_accuracy` for a task with several dev sets (MNLI)."""
    return metric if len(task.dev_splits) == 1 else f"{split}_{metric}"


def score_names(task: GlueTask) -> list[str]:
    """Every dev score a fine-tune reports: each metric on each dev set."""
    return [score_name(task, split.name, metric) for split in task.dev_splits for metric in task.metrics]


def target_names(task: GlueTask) -> list[str]:
    """The scores the GLUE average counts: the target metric of each dev set."""
    return [score_name(task, split.name, task.metrics[0]) for split in task.dev_splits]


@dataclass(frozen=True)
class GlueSplit:
    """A task's examples in one split; texts have surrounding whitespace stripped, as the
    sources differ there (SST-2's TSV ends each sentence with a space)."""

    text_a: list[str]
    text_b: list[str] | None  # None for single-sentence tasks
    labels: np.ndarray  # int64 class ids, or float32 scores for regression

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int]) -> GlueSplit:
        """The examples at `indices`, in that order (a subset for a cheaper fine-tune)."""
        def pick(texts: list[str]) -> list[str]:
            return [texts[index] for index in indices]

        return GlueSplit(pick(self.text_a), None if self.text_b is None else pick(self.text_b),
                         self.labels[np.asarray(indices, dtype=np.int64)])


def parse_tasks(text: str) -> tuple[GlueTask, ...]:
    """The tasks a comma-separated list names, in its order without repeats; "all" names every task."""
    if text.strip().lower() == "all":
        return tuple(TASKS.values())
    names = [name.strip().lower() for name in text.split(",")]
    for name in names:
        if name not in TASKS:
            raise CrammitError(f"unknown GLUE task {name!r}; name 'all' or a comma-separated list of "
                               f"{', '.join(TASKS)}")
    return tuple(TASKS[name] for name in dict.fromkeys(names))


def load_task(task: GlueTask, glue_dir: Path | None) -> dict[str, GlueSplit]:
    """A task's train set and dev sets, keyed TRAIN and by each dev set's name: from the
    official GLUE files under glue_dir, or from the hub where glue_dir is None."""
    if glue_dir is None:
        return _load_hub(task)
    stems = {TRAIN: TRAIN} | {split.name: split.tsv_stem for split in task.dev_splits}
    directory = Path(glue_dir) / task.directory
    return {name: read_tsv(directory / f"{stem}.tsv", task) for name, stem in stems.items()}


def read_tsv(path: Path, task: GlueTask) -> GlueSplit:
    """One of a task's official GLUE files. Lines are split on tabs alone, with no CSV
    quoting: GLUE's sentences hold unbalanced quotes, which a CSV reader would run on
    across lines. Columns are found by the header's names, as MNLI's files differ in how
    many they have."""
    lines = _lines(path, task)
    if not lines:
        raise CrammitError(f"{path} is empty; expected the official GLUE {task.directory} file")
    header = list(task.headerless_fields) or lines[0].split("\t")
    first = 1 if task.headerless_fields else 2  # the line number of the first example
    missing = [column for column in (*task.text_columns, task.label_column) if column not in header]
    if missing:
        raise CrammitError(f"{path} line 1: header lacks column(s) {', '.join(map(repr, missing))}; "
                           f"expected the official GLUE {task.directory} file")
    text_indices = [header.index(column) for column in task.text_columns]
    label_index = header.index(task.label_column)
    class_ids = {name: class_id for class_id, name in enumerate(task.label_names)}
    texts: list[list[str]] = [[] for _ in text_indices]
    labels: list[float] = []
    for number, line in enumerate(lines[first - 1:], first):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise CrammitError(f"{path} line {number}: expected {len(header)} tab-separated fields, "
                               f"found {len(fields)}")
        label = fields[label_index]
        if task.is_regression:
            labels.append(_score(label, path, number))
        elif label in class_ids:
            labels.append(class_ids[label])
        else:
            raise CrammitError(f"{path} line {number}: label {label!r} is not one of "
                               f"{', '.join(task.label_names)}")
        for column, index in zip(texts, text_indices, strict=True):
            column.append(fields[index].strip())
    if not labels:
        raise CrammitError(f"{path} holds no examples")
    return GlueSplit(texts[0], texts[1] if len(texts) > 1 else None,
                     np.array(labels, np.float32 if task.is_regression else np.int64))


def _lines(path: Path, task: GlueTask) -> list[str]:
    """A file's lines, less their endings. A line ends at "\\n" (or "\\r\\n") only: a lone
    "\\r" is part of a sentence, where Python's text mode would end a line there."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CrammitError(f"cannot read {path} ({error.strerror}); --glue-dir must hold the official GLUE "
                           f"layout, e.g. {task.directory}/train.tsv") from error
    try:
        text = data.decode("utf-8-sig")  # MRPC's files begin with a byte order mark
    except UnicodeDecodeError as error:
        line = error.object.count(b"\n", 0, error.start) + 1  # error.object is data less any BOM
        raise CrammitError(f"{path} line {line}: not UTF-8 text ({error.reason})") from error
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _score(text: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CrammitError(f"{path} line {number}: score {text!r} is not a number")
    return value


def _load_hub(task: GlueTask) -> dict[str, GlueSplit]:
    import datasets  # slow to import, and only this source needs it

    try:
        dataset = datasets.load_dataset(HF_DATASET, task.name)
    except Exception as error:  # no network, no hub access, a proxy...: each ends the same way
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CrammitError(f"cannot load GLUE {task.name} from the Hugging Face hub ({reason}); pass "
                           "--glue-dir with the official GLUE files") from error
    splits = {TRAIN: TRAIN} | {split.name: split.hf_split for split in task.dev_splits}
    return {name: _hub_split(dataset[split], task) for name, split in splits.items()}


def _hub_split(rows: datasets.Dataset, task: GlueTask) -> GlueSplit:
    texts = [[text.strip() for text in rows[column]] for column in task.hf_text_columns]
    return GlueSplit(texts[0], texts[1] if len(texts) > 1 else None,
                     np.asarray(rows["label"], np.float32 if task.is_regression else np.int64))
