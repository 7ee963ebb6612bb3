"""Bad input: one line on stderr naming the flag to fix, exit code 2, no traceback, nothing
half-written. Ctrl-C: one line on what finished and how to continue, exit code 130.

One real process per command checks the contract end to end; the other cases run in
this process (CliRunner), and only those that need Ray start it, on the session's cluster.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import ray
from typer.testing import CliRunner

from crammit.cli import app
from crammit.errors import Interrupted
from tests.helpers import GLUE_WORDS, tiny_train_config, write_finished_run, write_glue_dir


def crammit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crammit", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def one_error_line(result) -> str:
    """The one `error:` line of an in-process run that exited with code 2."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_a_usage_error_is_one_line_in_a_real_process():
    assert_one_line_error(crammit("train", "--gpus", "0", "--size", "huge"),
                          "Invalid value for '--size'", "'huge' is not one of 'micro', 'tiny'")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hours", "0"], "--hours must be positive and finite, got 0"),
        (["--tokens", "-5"], "--tokens must be positive and finite, got -5"),
        (["--hours", "1", "--tokens", "5"], "give one budget"),
        (["--batch-size", "100", "--micro-batch", "64"], "not a multiple of micro-batch"),
        (["--batch-size", "0"], "--batch-size must be a positive finite number, got 0"),
        (["--arch", "gpt"], "Invalid value for '--arch'"),
        (["--recipe", "adam"], "Invalid value for '--recipe'"),
        (["--size", "huge"], "Invalid value for '--size'"),
        (["--recipe", "bert", "--micro-batch", "100"], "batch size 256 is not a multiple of micro-batch 100"),
        (["--hours", "nan"], "--hours must be positive and finite, got nan"),
        (["--tokens", "inf"], "--tokens must be positive and finite, got inf"),
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--seed", "-1"], "--seed must be in [0, 16777216), got -1"),
        (["--zero-stage", "5"], "--zero-stage must be one of 0, 1, 2, got 5"),
        (["--max-failures", "-2"], "--max-failures must be >= 0 (or -1: no limit), got -2"),
        (["--eval-minutes", "-1"], "--eval-minutes must be a finite number >= 0, got -1"),
        (["--checkpoint-minutes", "inf"], "--checkpoint-minutes must be a finite number >= 0, got inf"),
        (["--max-eval-sequences", "0"], "--max-eval-sequences must be at least 1, got 0"),
        (["--workers", "0"], "Invalid value for '--workers'"),
        (["--workers", "300"], "--workers must be from 1 to 256, got 300"),
        (["--profile-steps", "-1"], "--profile-steps must be >= 0, got -1"),
        (["--learning-rate", "1e-3"], "No such option: --learning-rate"),
    ],
)
def test_bad_flags_are_named(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--out",
                                      str(tmp_path / "run"), *args])
    assert fragment in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_gpu_counts_are_named():
    assert "Invalid value for '--gpus'" in one_error_line(CliRunner().invoke(app, ["train", "--gpus", "-1"]))
    result = CliRunner().invoke(app, ["train", "--gpus", "300", "--size", "tiny"])
    assert "--gpus must be from 1 to 256, got 300" in one_error_line(result)


def test_a_data_directory_that_is_not_prepared(tmp_path):
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "is not a prepared corpus" in result.output


def test_missing_and_empty_corpus(tmp_path, ray_session):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    for corpus, fragment in ((str(tmp_path / "nope.txt"), "does not exist"), (str(empty), "no non-empty")):
        result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--corpus", corpus,
                                          "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path)])
        # (Ray Data's loggers here still hold an earlier CliRunner's closed stream: their output
        # is "Logging error" tracebacks, which a real process does not have.)
        assert result.exit_code == 2 and fragment in result.output, result.output


def test_a_missing_corpus_is_refused_before_ray_starts(tmp_path, monkeypatch):
    from crammit.train import run

    monkeypatch.setattr(run, "connect", lambda *args: pytest.fail("Ray was started"))
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--corpus",
                                      str(tmp_path / "nope.txt"), "--out", str(tmp_path / "run")])
    assert "does not exist" in one_error_line(result)


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
    assert result.exit_code == 2 and "drop --hours, --size (only --address" in result.output


def test_resume_takes_new_launch_options_and_keeps_the_run(tmp_path, monkeypatch):
    from crammit.train import run, rundir

    saved = tiny_train_config(tmp_path, tmp_path / "corpus.txt")
    rundir.save_config(tmp_path, saved)
    launched = []
    monkeypatch.setattr(run, "connect", lambda *args: None)
    monkeypatch.setattr(run, "launch", lambda config, **_: launched.append(config) or rundir.FinalResults(
        **{field: 0 for field in rundir.FinalResults.__dataclass_fields__}))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--max-failures", "7",
                                      "--checkpoint-minutes", "5"])
    assert result.exit_code == 0, result.output
    [config] = launched
    assert (config.launch.max_failures, config.launch.checkpoint_every_s) == (7, 300)
    assert config.run_defining() == saved.run_defining() and config.launch.progress_bar is False
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--checkpoint-minutes", "-1"])
    assert one_error_line(result) == "error: --checkpoint-minutes must be a finite number >= 0, got -1"


def test_more_gpus_than_the_cluster_has(tmp_path, ray_session):
    result = CliRunner().invoke(app, ["train", "--gpus", "64", "--size", "tiny", "--out",
                                      str(tmp_path / "run")])
    assert "asked for 64 GPU workers but the Ray cluster has 0 GPUs" in one_error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("corpus", "extra", "fragment"),
    [
        ("{tmp}/missing.jsonl", [], "does not exist"),
        ("{tmp}/nothing-*.jsonl", [], "matches no"),
        ("{tmp}/docs.jsonl", ["--text-field", "body"], "no field 'body'"),
        ("{tmp}/docs.jsonl", ["--near-duplicates", "1.5"],
         "--near-duplicates must be a Jaccard similarity in [0, 1), e.g. 0.8 (0: keep near-duplicates), "
         "got 1.5"),
        ("{tmp}/docs.jsonl", ["--order", "sorted"], "Invalid value for '--order'"),
    ],
)
def test_data_prepare_checks_its_input_before_ray_starts(tmp_path, corpus, extra, fragment, monkeypatch):
    from crammit import cluster

    monkeypatch.setattr(cluster, "start_ray", lambda *args: pytest.fail("Ray was started"))
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    result = CliRunner().invoke(app, ["data", "prepare", "--corpus", corpus.format(tmp=tmp_path), "--out",
                                      str(tmp_path / "out"), *extra])
    assert fragment in one_error_line(result)


def test_data_prepare_of_a_broken_file_is_one_line_in_a_real_process(tmp_path, ray_session):
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n\n{not json\n")
    result = crammit("data", "prepare", "--corpus", str(tmp_path / "broken.jsonl"), "--out",
                     str(tmp_path / "out"), "--address", ray.get_runtime_context().gcs_address)
    assert_one_line_error(result, "line 3 is not a JSON object")


def test_data_inspect_of_a_directory_that_is_not_prepared(tmp_path):
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 2 and "not a prepared corpus" in result.output


def test_study_scaling_dry_run_prints_the_plan_without_training(tmp_path):
    result = CliRunner().invoke(app, ["study", "scaling", "--budgets", "6,12,24", "--dry-run", "--out",
                                      str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    for fragment in ("9 trials", "crammed-small-6h", "crammed-crammed-24h", "126.00 GPU-hours",
                     "expected precision (5 simulated studies", "this design will likely not identify: ",
                     "suggestion: "):
        assert fragment in result.stdout
    assert "cannot run this study as asked" in result.stdout  # this machine has no GPU
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--budgets", "6", "--sizes", "tiny,huge"], "--sizes: unknown model size 'huge'"),
    (["--budgets", "6,0"], "--budgets: 0 is not positive"),
    (["--budgets", "six"], "--budgets: 'six' is not a number"),
    (["--sizes", "tiny"], "Missing option '--budgets'"),
    (["--budgets", "6", "--unit", "days"], "Invalid value for '--unit'"),
    (["--budgets", "6", "--sizes", "tiny", "--gpus-per-trial", "4"], "need 4 GPU(s) each"),
    (["--budgets", "6", "--order", "sorted"], "Invalid value for '--order'"),
    (["--budgets", "6", "--seeds", "0"], "Invalid value for '--seeds'"),
    (["--budgets", "6", "--lr", "0"], "--lr must be a positive finite number, got 0"),
    (["--budgets", "6", "--micro-batch", "-8"], "--micro-batch must be a positive finite number, got -8"),
    (["--budgets", "6", "--glue", "rte,wnli"], "--glue: unknown GLUE task 'wnli'"),
    (["--budgets", "6", "--glue-seeds", "0"], "Invalid value for '--glue-seeds'"),
    (["--budgets", "6", "--reference-law", "1.7,400"], "--reference-law: expected E,A,B,alpha,beta"),
])
def test_study_scaling_bad_input(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["study", "scaling", *args, "--out", str(tmp_path / "s")])
    assert fragment in one_error_line(result)
    assert not (tmp_path / "s").exists()


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
        assert fragment in one_error_line(result)
    assert not list(tmp_path.glob("*-fit/fit.json"))
    for flags, fragment in ((["--params", "embedding"], "--params must be one of total, non-embedding, got "
                                                        "embedding"),
                            (["--resamples", "0"], "--resamples must be at least 1, got 0")):
        assert fragment in one_error_line(CliRunner().invoke(app, ["study", "fit", str(few), *flags]))


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
        ([str(run), "--tasks", "rte,wnli"], "--tasks: unknown GLUE task 'wnli'"),
        ([str(run), "--seeds", "0"], "Invalid value for '--seeds'"),
        ([str(run), "--warmup", "1"], "--warmup must be in [0, 1), got 1"),
        ([str(run), "--lr", "-1e-5"], "--lr must be a positive finite number, got -1e-05"),
        ([str(run), "--max-train-examples", "-1"], "--max-train-examples must be >= 0, got -1"),
        ([str(run), "--betas", "0.9"], "--betas '0.9' is not two numbers"),
    ]
    for args, fragment in cases:
        result = CliRunner().invoke(app, ["eval", "glue", *args, "--gpus", "0"])
        assert fragment in one_error_line(result)
    assert not (run / "glue").exists()  # nothing started, nothing written


def test_export_hf(tmp_path):
    from tests.helpers import GLUE_WORDS, write_finished_run

    assert_one_line_error(crammit("export", "hf", str(tmp_path)), "holds no final model")
    run = write_finished_run(tmp_path / "run", [" ".join(GLUE_WORDS)] * 20)
    result = CliRunner().invoke(app, ["export", "hf", str(run), "--out", str(tmp_path / "exported")])
    assert result.exit_code == 0 and (tmp_path / "exported" / "model.safetensors").is_file(), result.output
    result = CliRunner().invoke(app, ["export", "hf", str(run), "--out", str(run)])
    assert "--out" in one_error_line(result)


# Ctrl-C: what finished, how to continue, exit code 130.


def interrupted_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("interrupted:")]
    assert result.exit_code == 130 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_an_interrupted_run_says_how_to_resume_it(tmp_path, monkeypatch):
    from crammit.train import run, rundir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.save_config(run_dir, tiny_train_config(run_dir, tmp_path / "corpus.txt"))
    monkeypatch.setattr(run, "connect", lambda *args: None)

    def stopped(config, **_):
        raise Interrupted(f"the run in {run_dir} stopped; its last checkpoint is at step 4")

    monkeypatch.setattr(run, "launch", stopped)
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--address", "10.0.0.1:6379"])
    assert interrupted_line(result) == (
        f"interrupted: the run in {run_dir} stopped; its last checkpoint is at step 4; continue with "
        f"`crammit train --resume {run_dir} --address 10.0.0.1:6379`")


def test_a_run_interrupted_before_it_started_says_to_start_it_again(tmp_path, monkeypatch):
    from crammit.train import run

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "connect", interrupt)
    result = CliRunner().invoke(app, ["train", "--gpus", "0", "--size", "tiny", "--out",
                                      str(tmp_path / "run")])
    assert interrupted_line(result) == (
        "interrupted: the run stopped before it started; run the same command to start it again")


def test_launch_turns_ray_train_s_ctrl_c_exit_into_interrupted(tmp_path, ray_session, monkeypatch):
    """Ray Train's Ctrl-C handler aborts the run and exits; `launch` says where the run
    stopped instead, and gives Ctrl-C back to the handler it had before."""
    import ray.train.torch

    from crammit.train import run

    class AbortedTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            signal.signal(signal.SIGINT, lambda *args: None)  # as Ray Train's fit() does
            raise SystemExit(0)

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", AbortedTrainer)
    before = signal.getsignal(signal.SIGINT)
    config = tiny_train_config(tmp_path / "run", tmp_path / "corpus.txt")
    with pytest.raises(Interrupted, match=r"the run in .*run stopped before its first checkpoint"):
        run.launch(config, data={"datasets": {}})
    assert signal.getsignal(signal.SIGINT) is before


def fake_plan(monkeypatch, run_study):
    """`study` commands with the plan and its precision stubbed out (a CPU plan calibrates
    for seconds), and `run_study` replaced."""
    from types import SimpleNamespace

    from crammit.study import sweep

    plan = SimpleNamespace(render=lambda: "plan", problem="", calibration=None)
    monkeypatch.setattr(sweep, "plan_study", lambda *args: plan)
    monkeypatch.setattr(sweep, "study_precision", lambda *args, **kwargs: ([], None))
    monkeypatch.setattr(sweep, "run_study", run_study)


def test_an_interrupted_study_says_what_finished_and_how_to_continue(tmp_path, monkeypatch):
    from crammit.study import results

    def stopped(spec, out, *args, **kwargs):
        results.save_spec(out, spec)
        raise Interrupted("2 of 9 trials finished")

    fake_plan(monkeypatch, stopped)
    scaling = ["study", "scaling", "--budgets", "1e4,2e4,4e4", "--unit", "tokens", "--sizes",
               "micro,tiny,mini", "--gpus", "0"]
    out = tmp_path / "study"
    out.mkdir()
    result = CliRunner().invoke(app, [*scaling, "--out", str(out)])
    assert interrupted_line(result) == "interrupted: 2 of 9 trials finished; run the same command to continue"
    assert "study directory" not in result.output
    monkeypatch.chdir(tmp_path)  # the default study directory, runs/<time>-scaling, goes here
    result = CliRunner().invoke(app, scaling)
    (default,) = (tmp_path / "runs").iterdir()
    assert interrupted_line(result) == (
        f"interrupted: 2 of 9 trials finished; run the same command with --out runs/{default.name} to "
        "continue")


def test_a_study_interrupted_before_it_started_says_to_start_it_again(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    fake_plan(monkeypatch, interrupt)
    result = CliRunner().invoke(app, ["study", "scaling", "--budgets", "1e4", "--unit", "tokens", "--sizes",
                                      "micro", "--gpus", "0", "--out", str(tmp_path / "study")])
    assert interrupted_line(result) == (
        "interrupted: the study stopped before it started; run the same command to start it again")


def test_an_interrupted_glue_evaluation_says_how_to_continue(tmp_path, monkeypatch):
    from crammit.eval import glue

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(glue, "evaluate_glue", interrupt)
    result = CliRunner().invoke(app, ["eval", "glue", str(tmp_path), "--gpus", "0", "--tasks", "rte"])
    assert interrupted_line(result) == (
        f"interrupted: the evaluation stopped; the fine-tunes that finished are kept in {tmp_path / 'glue'}; "
        "run the same command to continue")


def interrupt_when(process: subprocess.Popen, ready, deadline_s: float = 240) -> str:
    """SIGINT to `process` once `ready()` holds (it has done some work), then the one line it
    says it was interrupted in; Ray's threads may print lines of theirs around it as it stops."""
    deadline = time.monotonic() + deadline_s
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    said = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert process.returncode == 130 and len(said) == 1, stderr[-3000:]
    return said[0]


@pytest.mark.slow
def test_ctrl_c_during_training_in_a_real_process(tmp_path, toy_data, ray_session):
    """Ray Train's own Ctrl-C handler aborts the run mid-fit; the command still says where
    the run stopped and how to resume it, and exits with code 130."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "crammit", "train", "--gpus", "0", "--size", "micro", "--tokens", "1e9",
         "--data", str(toy_data), "--out", str(run_dir), "--address", ray.get_runtime_context().gcs_address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once the training loop runs, inside Ray Train's fit().
    last = interrupt_when(process, (run_dir / "attempts.json").exists)
    assert last.startswith(f"interrupted: the run in {run_dir} stopped")
    assert last.endswith(f"continue with `crammit train --resume {run_dir} --address "
                         f"{ray.get_runtime_context().gcs_address}`")


@pytest.mark.slow
def test_ctrl_c_during_a_study_in_a_real_process(tmp_path, toy_data, ray_session):
    """Tune stops its trials on Ctrl-C and returns: the command says so, fits nothing and
    exits with code 130 (the first trial is mid-run, with a checkpoint to resume from)."""
    study = tmp_path / "study.toml"
    study.write_text('name = "stopped"\nunit = "tokens"\ncheckpoint_minutes = 0.01\nmax_eval_sequences = 32\n'
                     '[[settings]]\nname = "tiny"\nsizes = ["tiny"]\nbudgets = [1e9]\ngpus = 0\n'
                     '[settings.overrides]\nbatch_size = 16\nmicro_batch_size = 8\n')
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "crammit", "study", "run", str(study), "--out", str(out),
         "--data", str(toy_data), "--allow-ordered-data", "--address", ray.get_runtime_context().gcs_address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = interrupt_when(process, lambda: any((out / "trials").glob("*/checkpoints/*")))
    assert last == "interrupted: 0 of 1 trials finished; run the same command to continue"
    assert not (out / "fit.json").exists()


@pytest.mark.slow
def test_ctrl_c_during_glue_fine_tunes_in_a_real_process(tmp_path, ray_session):
    run_dir = write_finished_run(tmp_path / "run", [" ".join(GLUE_WORDS)] * 20)
    process = subprocess.Popen(
        [sys.executable, "-m", "crammit", "eval", "glue", str(run_dir), "--tasks", "rte", "--seeds", "20",
         "--epochs", "20", "--gpus", "0", "--glue-dir", str(write_glue_dir(tmp_path / "glue")),
         "--address", ray.get_runtime_context().gcs_address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seeds = run_dir / "glue" / "seeds"
    last = interrupt_when(process, lambda: any(seeds.glob("rte-seed*.json")))
    finished = len(list(seeds.glob("rte-seed*.json")))
    assert 1 <= finished < 20
    assert last == f"interrupted: {finished} of 20 GLUE fine-tunes finished; run the same command to continue"
