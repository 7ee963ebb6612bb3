"""GLUE's files and hub dataset read into splits: the real files where this checkout has
them, the other tasks' layouts written here, and the errors a wrong --glue-dir gets."""

import re
from pathlib import Path

import datasets
import numpy as np
import pytest

from crammit.errors import CrammitError
from crammit.eval.glue_data import (
    TASKS,
    GlueSplit,
    load_task,
    parse_tasks,
    read_tsv,
    score_names,
    target_names,
)

GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "glue"
MNLI_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV = [*MNLI_TRAIN[:-1], "label2", "label3", "label4", "label5", "gold_label"]
RTE = ["index", "sentence1", "sentence2", "label"]
STSB = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
        "score"]
STSB_ROW = ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "a", "b"]  # less the score


@pytest.fixture(scope="module")
def real() -> dict[str, dict[str, GlueSplit]]:
    """The tasks /work/shared/glue holds, each read once."""
    if not GLUE.is_dir():
        pytest.skip(f"no GLUE files at {GLUE}")
    return {name: load_task(TASKS[name], GLUE) for name in ("rte", "mrpc", "stsb", "cola", "sst2")}


def write(path: Path, rows: list[list[str]], prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prefix + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def mnli_row(fields: list[str], premise: str, hypothesis: str, label: str) -> list[str]:
    row = ["0", "1", "2n", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", premise, hypothesis]
    return row + [label] * (len(fields) - len(row))


@pytest.mark.parametrize(("name", "train", "dev"), [
    ("rte", 2490, 277), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("cola", 8551, 1043), ("sst2", 67349, 872),
])
def test_real_files_have_glues_row_counts(real, name, train, dev):
    splits = real[name]
    assert list(splits) == ["train", "dev"]
    assert (len(splits["train"]), len(splits["dev"])) == (train, dev)
    for split in splits.values():
        assert len(split.text_a) == len(split) and (split.text_b is None) == (name in ("cola", "sst2"))
        if split.text_b is not None:
            assert len(split.text_b) == len(split)


def test_real_files_first_rows(real):
    sst2 = real["sst2"]["dev"]  # the file has "journey . \t1": the space is stripped
    assert (sst2.text_a[0], sst2.labels[0], sst2.labels.dtype) == (
        "it 's a charming and often affecting journey .", 1, np.int64)
    assert (sst2.labels.sum(), len(sst2) - sst2.labels.sum()) == (444, 428)
    rte = real["rte"]["dev"]
    assert rte.text_a[0].startswith("Dana Reeve, the widow of the actor Christopher Reeve, has died")
    assert (rte.text_b[0], rte.labels[0]) == ("Christopher Reeve had an accident.", 1)  # not_entailment
    assert real["rte"]["train"].labels[:2].tolist() == [1, 0]
    cola = real["cola"]["dev"]
    assert (cola.text_a[0], cola.labels[0]) == ("The sailors rode the breeze clear of the rocks.", 1)
    assert set(real["cola"]["train"].labels.tolist()) == {0, 1}


def test_real_sts_b_scores_are_floats(real):
    dev, train = real["stsb"]["dev"], real["stsb"]["train"]
    assert dev.labels.dtype == np.float32 and dev.labels[:2].tolist() == [5.0, 4.75]
    assert dev.text_a[0] == "A man with a hard hat is dancing."
    assert dev.text_b[0] == "A man wearing a hard hat is dancing."
    assert train.labels[1] == np.float32(3.8) and train.labels.min() >= 0 and train.labels.max() <= 5


def test_real_quotes_survive(real):
    # MRPC's first dev pair opens a quote it never closes; a CSV reader would merge lines there.
    mrpc = real["mrpc"]["dev"]
    assert mrpc.text_b[0] == '"The foodservice pie business does not fit our long-term growth strategy.'
    assert mrpc.labels[:2].tolist() == [1, 0]
    assert real["cola"]["train"].text_a[3056] == 'Susan whispered "Shut up".'


def test_qqp_and_qnli_layouts(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    for stem, label in (("train", "1"), ("dev", "0")):
        write(tmp_path / "QQP" / f"{stem}.tsv", [header, ["7", "1", "2", " How? ", 'Why "so', label]])
    qqp = load_task(TASKS["qqp"], tmp_path)
    train = qqp["train"]
    assert (train.text_a, train.text_b, train.labels.tolist()) == (["How?"], ['Why "so'], [1])
    assert qqp["dev"].labels.tolist() == [0]

    header = ["index", "question", "sentence", "label"]
    rows = [["0", "Who?", "Ann.", "entailment"], ["1", "When?", "Here.", "not_entailment"]]
    for stem in ("train", "dev"):
        write(tmp_path / "QNLI" / f"{stem}.tsv", [header, *rows])
    qnli = load_task(TASKS["qnli"], tmp_path)["dev"]
    assert (qnli.text_a, qnli.text_b, qnli.labels.tolist()) == (["Who?", "When?"], ["Ann.", "Here."], [0, 1])


def test_mnli_reads_12_column_train_and_16_column_dev_sets(tmp_path):
    write(tmp_path / "MNLI" / "train.tsv", [MNLI_TRAIN, mnli_row(MNLI_TRAIN, "P0", "H0", "neutral")])
    write(tmp_path / "MNLI" / "dev_matched.tsv", [MNLI_DEV, mnli_row(MNLI_DEV, "P1", "H1", "contradiction"),
                                                  mnli_row(MNLI_DEV, "P2", "H2", "entailment")])
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", [MNLI_DEV, mnli_row(MNLI_DEV, "P3", "H3", "neutral")])
    splits = load_task(TASKS["mnli"], tmp_path)
    assert list(splits) == ["train", "matched", "mismatched"]
    train = splits["train"]
    assert (train.text_a, train.text_b, train.labels.tolist()) == (["P0"], ["H0"], [1])
    assert (splits["matched"].text_a, splits["matched"].labels.tolist()) == (["P1", "P2"], [2, 0])
    assert (splits["mismatched"].text_b, splits["mismatched"].labels.tolist()) == (["H3"], [1])


def test_cola_has_no_header_and_mrpc_a_byte_order_mark(tmp_path):
    cola = write(tmp_path / "cola.tsv", [["gj04", "1", "", "He left."], ["gj04", "0", "*", 'He "left.']])
    split = read_tsv(cola, TASKS["cola"])
    assert (split.text_a, split.text_b, split.labels.tolist()) == (["He left.", 'He "left.'], None, [1, 0])

    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    mrpc = write(tmp_path / "mrpc.tsv", [header, ["0", "1", "2", "A b.", "A c."]], prefix="\ufeff")
    split = read_tsv(mrpc, TASKS["mrpc"])
    assert (split.text_a, split.text_b, split.labels.tolist()) == (["A b."], ["A c."], [0])


def test_lines_end_at_newlines_only(tmp_path):
    path = tmp_path / "rte.tsv"
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\r\n0\ta\rb\tc\tentailment\r\n")
    split = read_tsv(path, TASKS["rte"])
    assert (split.text_a, split.labels.tolist()) == (["a\rb"], [0])


def test_take_keeps_the_examples_asked_for():
    split = GlueSplit(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0]))
    subset = split.take([2, 0])
    assert (subset.text_a, subset.text_b, subset.labels.tolist()) == (["c", "a"], ["z", "x"], [0, 0])
    assert len(subset) == 2
    assert GlueSplit(["a"], None, np.array([1])).take([0]).text_b is None


def test_a_missing_directory_or_file_names_the_path(tmp_path):
    with pytest.raises(CrammitError, match=r"RTE/train\.tsv .*--glue-dir must hold the official GLUE layout"):
        load_task(TASKS["rte"], tmp_path)
    write(tmp_path / "RTE" / "train.tsv", [RTE, ["0", "a", "b", "entailment"]])
    with pytest.raises(CrammitError, match=re.escape(f"cannot read {tmp_path / 'RTE' / 'dev.tsv'}")):
        load_task(TASKS["rte"], tmp_path)


@pytest.mark.parametrize(("task", "rows", "message"), [
    ("rte", [RTE, ["0", "a", "b", "entailment"], ["1", "a b"]],
     "line 3: expected 4 tab-separated fields, found 2"),
    ("rte", [RTE, ["0", "a", "b", "entailment"], ["1", "a", "b", "c", "entailment"]],
     "line 3: expected 4 tab-separated fields, found 5"),
    ("rte", [RTE, ["0", "a", "b", "maybe"]],
     "line 2: label 'maybe' is not one of entailment, not_entailment"),
    ("stsb", [STSB, [*STSB_ROW, "high"]], "line 2: score 'high' is not a number"),
    ("stsb", [STSB, [*STSB_ROW, "nan"]], "line 2: score 'nan' is not a number"),
    ("cola", [["gj04", "2", "", "x"]], "line 1: label '2' is not one of 0, 1"),
])
def test_a_malformed_row_names_the_file_and_line(tmp_path, task, rows, message):
    path = write(tmp_path / "x.tsv", rows)
    with pytest.raises(CrammitError, match=re.escape(f"{path} {message}")):
        read_tsv(path, TASKS[task])


def test_a_file_that_is_not_a_tasks_file_is_named(tmp_path):
    path = tmp_path / "x.tsv"
    for content, message in ((b"", "is empty"),
                             (b"index\tsentence1\tsentence2\tlabel\n", "holds no examples"),
                             (b"index\tsentence1\tsentence2\n", "line 1: header lacks column(s) 'label'"),
                             (b"\xef\xbb\xbfindex\n0\t\xff\n", "line 2: not UTF-8 text")):
        path.write_bytes(content)
        with pytest.raises(CrammitError, match=re.escape(f"{path} {message}")):
            read_tsv(path, TASKS["rte"])
    write(path, [MNLI_DEV[:-1], mnli_row(MNLI_DEV[:-1], "p", "h", "neutral")])
    with pytest.raises(CrammitError, match="header lacks column\\(s\\) 'gold_label'"):
        read_tsv(path, TASKS["mnli"])


def test_parse_tasks():
    every = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    assert [task.name for task in parse_tasks("all")] == every == list(TASKS)
    assert [task.name for task in parse_tasks("rte, MRPC,rte")] == ["rte", "mrpc"]
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert (TASKS["mnli"].num_labels, TASKS["rte"].num_labels, TASKS["rte"].is_regression) == (3, 2, False)
    with pytest.raises(CrammitError, match=f"unknown GLUE task 'sst-2'.* {', '.join(every)}$"):
        parse_tasks("rte,sst-2")


def test_the_hub_source(monkeypatch):
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict({"premise": [f"{split} p "], "hypothesis": ["h"], "label": [2]})
            for split in ("train", "validation_matched", "validation_mismatched", "test_matched")})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = load_task(TASKS["mnli"], None)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert list(splits) == ["train", "matched", "mismatched"]
    matched = splits["matched"]
    assert (matched.text_a, matched.text_b, matched.labels.tolist()) == (["validation_matched p"], ["h"], [2])
    assert matched.labels.dtype == np.int64

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [3.5]})
        for split in ("train", "validation")}))
    stsb = load_task(TASKS["stsb"], None)["dev"]
    assert (stsb.labels.dtype, stsb.labels.tolist()) == (np.float32, [3.5])

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"sentence": ["good . "], "label": [1]})
        for split in ("train", "validation")}))
    sst2 = load_task(TASKS["sst2"], None)["train"]
    assert (sst2.text_a, sst2.text_b, sst2.labels.tolist()) == (["good ."], None, [1])


def test_the_hub_source_failing_says_to_pass_glue_dir(monkeypatch):
    def offline(path, name):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = ("cannot load GLUE rte from the Hugging Face hub (Couldn't reach 'nyu-mll/glue' on the Hub "
               "(LocalEntryNotFoundError)); pass --glue-dir with the official GLUE files")
    with pytest.raises(CrammitError, match=f"^{re.escape(message)}$"):
        load_task(TASKS["rte"], None)


def test_score_names_of_a_task_with_two_dev_sets():
    assert score_names(TASKS["mrpc"]) == ["f1", "accuracy"]
    assert target_names(TASKS["mnli"]) == ["matched_accuracy", "mismatched_accuracy"]
