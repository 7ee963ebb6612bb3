"""Bad input: one line on stderr, exit code 2, no traceback, nothing half-written."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from crammit.cli import app


def crammit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crammit", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_size_is_one_line_in_a_real_process():
    assert_one_line_error(crammit("train", "--gpus", "0", "--size", "huge"), "unknown model size", "tiny")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hours", "0"], "budget must be positive"),
        (["--tokens", "-5"], "budget must be positive"),
        (["--hours", "1", "--tokens", "5"], "give one budget"),
        (["--batch-size", "100", "--micro-batch", "64"], "not a multiple of micro-batch"),
    ],
)
def test_bad_budgets_and_batches(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--out",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and fragment in result.output
    assert not (tmp_path / "run").exists()


def test_missing_and_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    for corpus, fragment in ((str(tmp_path / "nope.txt"), "does not exist"), (str(empty), "no non-empty")):
        result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--corpus", corpus,
                                          "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path)])
        assert result.exit_code == 2 and fragment in result.output, result.output


def test_unreadable_or_conflicting_deepspeed_config(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    owns_batch = tmp_path / "batch.json"
    owns_batch.write_text(json.dumps({"train_batch_size": 64}))
    cases = ((tmp_path / "missing.json", "cannot read --deepspeed-config"),
             (broken, "cannot read --deepspeed-config"), (owns_batch, "batch ramp controls"))
    for path, fragment in cases:
        result = CliRunner().invoke(app, ["train", "--gpus", "0", "--deepspeed-config", str(path)])
        assert result.exit_code == 2 and fragment in result.output, result.output


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a crammit run directory" in result.output


def test_resume_refuses_flags_that_would_change_the_run(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--hours", "48", "--size", "tiny"])
    assert result.exit_code == 2 and "drop --hours, --size" in result.output


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has(tmp_path):
    result = crammit("train", "--gpus", "64", "--size", "tiny", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "asked for 64 GPU workers", "GPUs")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("corpus", "extra", "fragment"),
    [
        ("{tmp}/missing.jsonl", [], "does not exist"),
        ("{tmp}/nothing-*.jsonl", [], "matches no"),
        ("{tmp}/docs.jsonl", ["--text-field", "body"], "no field 'body'"),
        ("{tmp}/docs.jsonl", ["--near-duplicates", "1.5"], "not a similarity"),
        ("{tmp}/broken.jsonl", [], "line 3 is not a JSON object"),
    ],
)
def test_data_prepare_bad_input(tmp_path, corpus, extra, fragment):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n\n{not json\n")
    result = crammit("data", "prepare", "--corpus", corpus.format(tmp=tmp_path), "--out",
                     str(tmp_path / "out"), *extra)
    assert_one_line_error(result, fragment)


def test_data_inspect_of_a_directory_that_is_not_prepared(tmp_path):
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 2 and "not a prepared corpus" in result.output
