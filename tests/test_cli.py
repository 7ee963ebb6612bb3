"""Bad input: one line on stderr, exit code 2, no traceback, nothing half-written."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from crammit.cli import app
from tests.helpers import tiny_train_config


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
        (["--arch", "gpt"], "unknown arch 'gpt'"),
        (["--recipe", "adam"], "unknown recipe 'adam'"),
        (["--recipe", "bert", "--micro-batch", "100"], "batch size 256 is not a multiple of micro-batch 100"),
        (["--hours", "nan"], "budget must be positive and finite"),
        (["--tokens", "inf"], "budget must be positive and finite"),
        (["--lr", "nan"], "peak_lr must be a positive finite number"),
        (["--zero-stage", "5"], "ZeRO stage 5 is not supported"),
        (["--max-failures", "-2"], "max_failures must be >= 0"),
        (["--eval-minutes", "-1"], "eval_every_s must be a finite number >= 0"),
        (["--workers", "0"], "--workers >= 1"),
        (["--profile-steps", "-1"], "profile steps must be >= 0"),
    ],
)
def test_bad_budgets_and_batches(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--out",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and fragment in result.output
    assert not (tmp_path / "run").exists()


def test_a_data_directory_that_is_not_prepared(tmp_path):
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "is not a prepared corpus" in result.output


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


def test_flags_the_deepspeed_config_also_sets_are_refused(tmp_path):
    sets_both = tmp_path / "ds.json"
    sets_both.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16,
                                     "zero_optimization": {"stage": 1}}))
    for flags, named in ((["--micro-batch", "32"], "--micro-batch"), (["--zero-stage", "2"], "--zero-stage"),
                         (["--micro-batch", "32", "--zero-stage", "2"], "--micro-batch and --zero-stage")):
        result = CliRunner().invoke(app, ["train", "--gpus", "0", "--deepspeed-config", str(sets_both),
                                          *flags, "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and f"--deepspeed-config sets what {named} set" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a crammit run directory" in result.output


def test_resume_of_a_run_whose_config_this_version_does_not_know(tmp_path):
    config = tiny_train_config(tmp_path, tmp_path / "corpus.txt").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**config, "retired_setting": 1}))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "does not match this crammit version" in result.output


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


def test_study_scaling_dry_run_prints_the_plan_without_training(tmp_path):
    result = crammit("study", "scaling", "--budgets", "6,12,24", "--dry-run", "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    for fragment in ("9 trials", "crammed-small-6h", "crammed-crammed-24h", "126.00 GPU-hours",
                     "expected precision (5 simulated studies", "this design will likely not identify: ",
                     "suggestion: "):
        assert fragment in result.stdout
    assert "cannot run this study as asked" in result.stdout  # this machine has no GPU
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--budgets", "6", "--sizes", "huge"], "unknown model size 'huge'"),
    (["--budgets", "6,0"], "0 is not positive"),
    (["--budgets", "six"], "'six' is not a number"),
    (["--budgets", "6", "--unit", "days"], "unknown --unit 'days'"),
    (["--budgets", "6", "--sizes", "tiny", "--gpus-per-trial", "4"], "need 4 GPU(s) each"),
    (["--budgets", "6", "--order", "sorted"], "unknown corpus order 'sorted' (--order"),
    (["--budgets", "6", "--seeds", "0"], "seeds must be whole numbers of at least 1 (--seeds)"),
    (["--budgets", "6", "--reference-law", "1.7,400"], "--reference-law: expected E,A,B,alpha,beta"),
])
def test_study_scaling_bad_input(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["study", "scaling", *args, "--out", str(tmp_path / "s")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_study_file_with_an_unknown_key_is_one_line(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text('name = "x"\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudget = [1]\n')
    assert_one_line_error(crammit("study", "run", str(study), "--dry-run"), "unknown key(s) budget")


def test_study_fit_of_a_table_it_cannot_fit(tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("params,loss\n1e6,3.0\n")
    few = tmp_path / "few.csv"
    few.write_text("params,tokens,loss\n1e6,1e8,3.0\n2e6,1e8,2.9\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    constant = tmp_path / "constant.csv"
    constant.write_text("params,tokens,loss\n" + "".join(f"{n},{d},4.0\n" for n in (1e6, 2e6, 4e6)
                                                         for d in (1e8, 2e8, 4e8)))
    for table, fragment in ((missing, "tokens"), (few, "2 usable runs"), (empty, "is empty"),
                            (constant, "no law: the loss is 4 in all 9 runs"),
                            (tmp_path / "absent.csv", "does not exist")):
        result = CliRunner().invoke(app, ["study", "fit", str(table)])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and fragment in errors[0], result.output
    assert not list(tmp_path.glob("*-fit/fit.json"))
    result = CliRunner().invoke(app, ["study", "fit", str(few), "--params", "embedding"])
    assert result.exit_code == 2 and "unknown parameter count 'embedding' (--params)" in result.output


def test_study_fit_of_a_table_names_dropped_rows_and_draws_what_it_allows(tmp_path):
    rows = [(n, d, 2 + 300 / n**0.3 + 900 / d**0.3) for n in (1e6, 3e6, 1e7) for d in (1e8, 1e9, 1e10)]
    table = tmp_path / "table.csv"
    table.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{loss:.4f}\n" for n, d, loss in rows)
                     + "2e6,1e9,nan\n0,1e9,5.0\n")
    result = CliRunner().invoke(app, ["study", "fit", str(table), "--resamples", "50", "--out",
                                      str(tmp_path / "fit")])
    assert result.exit_code == 0, result.output
    assert "dropped 2 rows: loss NaN at row 10, params 0 at row 11" in result.output
    figures = {path.name for path in (tmp_path / "fit" / "plots").glob("*.png")}
    assert {"loss_vs_compute.png", "compute_frontier.png", "residuals.png"} <= figures
    (tmp_path / "fit" / "plots" / "residuals.png").unlink()
    result = CliRunner().invoke(app, ["study", "plot", str(tmp_path / "fit")])
    assert result.exit_code == 0 and (tmp_path / "fit" / "plots" / "residuals.png").is_file(), result.output


def test_eval_glue_unknown_task_is_one_line_in_a_real_process(tmp_path):
    result = crammit("eval", "glue", str(tmp_path), "--tasks", "rte,wnli")
    assert_one_line_error(result, "unknown GLUE task 'wnli'")


def test_eval_glue_bad_input(tmp_path):
    from tests.helpers import GLUE_WORDS, write_finished_run, write_glue_dir

    run = write_finished_run(tmp_path / "run", [" ".join(GLUE_WORDS)] * 20)
    glue = write_glue_dir(tmp_path / "glue")
    dev = glue / "RTE" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[4] = "4\tonly two fields"
    dev.write_text("\n".join(lines) + "\n")
    cases = [
        ([str(tmp_path)], "holds no final model"),
        ([str(run), "--tasks", "mrpc", "--glue-dir", str(glue)], "MRPC/train.tsv"),
        ([str(run), "--tasks", "rte", "--glue-dir", str(glue)], f"{dev} line 5: expected 4 tab-separated"),
        ([str(run), "--seeds", "0"], "--seeds and --workers must be at least 1"),
    ]
    for args, fragment in cases:
        result = CliRunner().invoke(app, ["eval", "glue", *args, "--gpus", "0"])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and fragment in errors[0], result.output
    assert not (run / "glue").exists()  # nothing started, nothing written


def test_export_hf(tmp_path):
    from tests.helpers import GLUE_WORDS, write_finished_run

    assert_one_line_error(crammit("export", "hf", str(tmp_path)), "holds no final model")
    run = write_finished_run(tmp_path / "run", [" ".join(GLUE_WORDS)] * 20)
    result = CliRunner().invoke(app, ["export", "hf", str(run), "--out", str(tmp_path / "exported")])
    assert result.exit_code == 0 and (tmp_path / "exported" / "model.safetensors").is_file(), result.output
    result = CliRunner().invoke(app, ["export", "hf", str(run), "--out", str(run)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "--out" in errors[0], result.output
