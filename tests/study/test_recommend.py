"""`crammit study recommend`: a study drawn from a known law recommends that law's allocation
and loss, with commands the CLI accepts (and, on CPUs, runs); a study whose law is not
identified, and bad input, get one line and exit 2."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from crammit.cli import app
from crammit.config import Budget, Device
from crammit.errors import CrammitError
from crammit.io import write_json
from crammit.model.flops import parameter_count, peak_flops, training_flops_per_token
from crammit.study import results
from crammit.study.allocation import FlopsPerToken, allocate
from crammit.study.fit import law_group
from crammit.study.laws import FitOptions
from crammit.study.recommend import Request, recommend, throughput
from crammit.study.spec import Setting, StudyData, StudySpec, TrialStatus, trial_model, write_study_file
from crammit.study.table import study_rows
from crammit.train.rundir import FinalResults
from tests.study.test_laws import PARAMS_TOKENS, noisy, params_tokens_loss

SMOKE = Path(__file__).parents[2] / "notebooks" / "smoke_study"
HOURS = (0.25, 0.5, 1, 2, 4, 8)
GPU_SIZES = ("tiny", "mini", "small", "medium", "base")
GPU_RATE = 0.3 * 989e12  # FLOP/s per GPU: 30 % of an H100's peak
CPU_SIZES = ("micro", "tiny", "mini", "small", "medium")
CPU_RATE = 2e10  # FLOP/s per CPU worker, as the smoke study's trials trained
UNIQUE_TOKENS = 5e9
RECIPE = {"batch_size": 64, "micro_batch_size": 16}


def write_study(directory: Path, sizes: tuple[str, ...], rate: float, gpus: int, mfu: bool = True,
                noise: float = 0.01) -> Path:
    """A study directory as `crammit study` leaves one (study.toml, trials.parquet,
    curves.parquet; no corpus prepared), its final losses drawn from the known L(N, D) with
    `noise`: every trial at `rate` FLOP/s, its tokens the analytic FLOPs per token of its
    size; GPU steps record their MFU (as on an H100) where `mfu`."""
    setting = Setting(name="crammed", sizes=sizes, budgets=HOURS, gpus=gpus, workers=1, overrides=RECIPE)
    spec = StudySpec(name="synthetic", settings=(setting,), data=StudyData(vocab_size=8192), resamples=60)
    directory.mkdir(parents=True)
    write_study_file(directory / results.STUDY_FILE, spec)
    rows = []
    for trial in spec.trials():
        model = trial_model(spec, trial.size, setting.arch)
        flops = rate * 3600 * trial.budget
        tokens = flops / training_flops_per_token(model, setting.recipe_config().mask_rate)
        rows.append({"trial": trial.name, "setting": setting.name, "size": trial.size, "arch": setting.arch,
                     "recipe": setting.recipe_label(), "gpus": gpus, "workers": 1,
                     "device": "cuda" if gpus else "cpu", "budget": trial.budget, "budget_unit": "hours",
                     "params": parameter_count(model), "tokens": tokens, "flops": flops,
                     "elapsed_s": 3600 * trial.budget, "device_hours": trial.budget,
                     "unique_tokens": UNIQUE_TOKENS, "epochs": tokens / UNIQUE_TOKENS,
                     "status": TrialStatus.OK.value})
    trials = pd.DataFrame(rows)
    trials["eval_loss"] = noisy(params_tokens_loss(trials["params"], trials["tokens"]), 0, noise)
    trials.to_parquet(directory / results.TRIALS_FILE)
    peak = peak_flops("H100") if gpus and mfu else None
    pd.DataFrame({"trial": trials["trial"], "tokens_per_s": trials["tokens"] / trials["elapsed_s"],
                  "mfu": rate / peak if peak else None}).to_parquet(directory / results.CURVES_FILE)
    return directory


def true_allocation(directory: Path, flops: float) -> tuple[float, float, float]:
    """The known law's compute-optimal N, D and loss at `flops`, under the study's c(N)."""
    trials = pd.read_parquet(directory / results.TRIALS_FILE)
    per_token = FlopsPerToken.from_trials(trials["params"], trials["tokens"], trials["flops"])
    truth = np.array([PARAMS_TOKENS[name] for name in ("E", "A", "B", "alpha", "beta")])
    return tuple(float(value[0]) for value in allocate(truth, [flops], per_token))


@pytest.fixture(scope="module")
def gpu_study(tmp_path_factory):
    study = write_study(tmp_path_factory.mktemp("recommend") / "gpu", GPU_SIZES, GPU_RATE, gpus=1)
    return study, recommend(study, Request(gpus=1, hours=24))


def within(value: float, truth: float, tolerance: float) -> bool:
    return abs(value / truth - 1) < tolerance


def test_a_study_of_a_known_law_recommends_its_allocation_and_loss(gpu_study):
    study, recommendation = gpu_study
    assert recommendation.flops == pytest.approx(24 * 3600 * GPU_RATE)
    n_opt, d_opt, loss = true_allocation(study, recommendation.flops)
    for interval, truth, tolerance in ((recommendation.params, n_opt, 0.15),
                                       (recommendation.tokens, d_opt, 0.15),
                                       (recommendation.optimal_loss, loss, 0.02)):
        assert within(interval.estimate, truth, tolerance) and interval.low <= truth <= interval.high
    # N_opt (3.9e8) lies beyond the largest size trained (base): the nearest named size is
    # large, trained for what the budget buys at its own FLOPs per token.
    assert recommendation.size == "large"
    assert recommendation.size_tokens == pytest.approx(recommendation.flops / training_flops_per_token(
        trial_model(StudySpec("s", (Setting("s", ("large",), (1.0,)),), data=StudyData(vocab_size=8192)),
                    "large", "crammed"), 0.25))
    truth = params_tokens_loss(recommendation.size_params, recommendation.size_tokens)
    assert recommendation.size_loss.low <= truth <= recommendation.size_loss.high
    assert within(recommendation.size_loss.estimate, truth, 0.02)
    assert recommendation.epochs == pytest.approx(recommendation.size_tokens / UNIQUE_TOKENS)


def test_every_number_is_labelled_with_how_far_it_extrapolates(gpu_study):
    study, recommendation = gpu_study
    text = recommendation.render()
    print(text)
    assert recommendation.extrapolation == pytest.approx(3.0) and recommendation.validated_factor == 2.0
    assert "extrapolated 3× beyond the largest trial; not validated: the rollout checked only to 2×" in text
    assert ("nearest named size: large (2.6e+08 parameters; 3.37× the largest size trained: extrapolated)"
            in text)
    assert "epochs of the study corpus's 5e+09 unique tokens (repeated data" in text
    assert "prediction interval" in text and "measured: the median of its 30 trials, 30% MFU" in text
    assert not recommendation.unidentified and "note:" not in text


def test_the_printed_commands_are_accepted_by_the_cli(gpu_study, monkeypatch, tmp_path):
    """The corpus preparation and the training run, each parsed by the real commands down to
    the edges that would start Ray: the corpus prepared is the study's, the run is the
    recommended size with the setting's recipe for the recommended tokens."""
    study, recommendation = gpu_study
    prepared, launched = [], []

    def prepare_corpus(config, out, cache_dir):
        prepared.append(config)
        manifest = {"config": {"vocab_size": config.vocab_size, "seq_len": config.seq_len},
                    "train_sequences": 0, "eval_sequences": 0, "shards": []}
        write_json(out / "manifest.json", manifest)
        return manifest

    def launch(config):
        launched.append(config)
        return FinalResults(initial_eval_loss=2.0, eval_loss=1.0, steps=1, tokens=1, flops=1.0, elapsed_s=1.0,
                            budget="1 tokens", eval_sequences=1, eval_mask_rate=0.15, resumed_at_step=0,
                            worker_nodes=("local",))

    monkeypatch.setattr("crammit.cluster.start_ray", lambda address=None: None)
    monkeypatch.setattr("crammit.data.pipeline.prepare_corpus", prepare_corpus)
    monkeypatch.setattr("crammit.train.run.connect", lambda config, address=None: None)
    monkeypatch.setattr("crammit.train.run.prepare_run", lambda config: config)
    monkeypatch.setattr("crammit.train.run.launch", launch)
    prepare, train = recommendation.commands
    for command in (prepare, train):
        result = CliRunner().invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, result.output
    assert prepared[0].vocab_size == 8192 and prepared[0].order.value == "shuffle"
    config = launched[0]
    assert config.size_name == "large" and parameter_count(config.model) == recommendation.size_params
    assert config.budget == Budget.tokens(round(recommendation.size_tokens))
    assert (config.recipe.batch_size, config.recipe.micro_batch_size) == (64, 16)
    assert config.device is Device.CUDA and config.num_workers == 1
    assert Path(config.data) == (study / results.DATA_DIR).resolve()


def test_another_gpu_is_planned_at_the_study_mfu(tmp_path):
    study = write_study(tmp_path / "gpu", GPU_SIZES, GPU_RATE, gpus=1)
    law = law_group(study_rows(pd.read_parquet(study / results.TRIALS_FILE)), None, FitOptions())
    curves = pd.read_parquet(study / results.CURVES_FILE)
    converted = throughput(law, curves, Request(gpus=8, gpu="A100"))
    assert converted.flops_per_s == pytest.approx(GPU_RATE * peak_flops("A100") / peak_flops("H100"))
    assert "30% of the study GPUs' 989 TFLOP/s peak, at that MFU on an A100's 312 TFLOP/s" in converted.source


@pytest.mark.parametrize(("study", "args", "fragment"), [
    ("smoke", ["--gpus", "0"], "no recommendation: the compute-optimal allocation of crammed is not "
                               "identified (it needs alpha and beta identified)"),
    ("missing", [], "is not a study directory"),
    ("empty", [], "cannot read study file"),
    ("smoke", ["--setting", "bert"], "unknown setting 'bert'; the study's settings are crammed"),
    ("smoke", [], "the study's trials ran on CPU workers: their throughput says nothing of 1 GPU × 24 h"),
    ("smoke", ["--gpus", "0", "--gpu", "H100"], "--gpu H100 names a GPU, but --gpus 0"),
    ("smoke", ["--hours", "0"], "--hours must be positive"),
    ("gpu", ["--gpu", "TPU"], "unknown GPU 'TPU' (--gpu)"),
    ("gpu-without-mfu", ["--gpu", "A100"], "the study's trials recorded no MFU"),
    ("gpu", ["--gpus", "3"], "the study's recipe cannot run on 3 GPUs × 24 h: batch size 64 is not a "
                             "multiple"),
])
def test_a_study_that_cannot_answer_says_why_in_one_line(study, args, fragment, tmp_path):
    directories = {"smoke": lambda: SMOKE, "missing": lambda: tmp_path / "nothing",
                   "empty": lambda: tmp_path,
                   "gpu": lambda: write_study(tmp_path / "gpu", GPU_SIZES, GPU_RATE, gpus=1),
                   "gpu-without-mfu": lambda: write_study(tmp_path / "gpu", GPU_SIZES, GPU_RATE, gpus=1,
                                                          mfu=False)}
    result = CliRunner().invoke(app, ["study", "recommend", str(directories[study]()), *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()], result.output
    assert result.output.startswith("error: ") and fragment in result.output, result.output


def test_a_request_the_cli_cannot_express_is_refused():
    with pytest.raises(CrammitError, match="--workers is for CPU runs"):
        Request(gpus=2, workers=2)


@pytest.mark.slow
def test_the_printed_command_trains_on_cpus(tmp_path, toy_data):
    """A CPU study's train command, run as printed but for a two-step budget on the test
    corpus, trains the recommended size."""
    study = write_study(tmp_path / "cpu", CPU_SIZES, CPU_RATE, gpus=0)
    recommendation = recommend(study, Request(gpus=0, workers=1, hours=24))
    assert recommendation.size in CPU_SIZES
    args = shlex.split(recommendation.commands[-1])[1:]
    args[args.index("--tokens") + 1] = str(2 * RECIPE["micro_batch_size"] * 128)
    args[args.index("--data") + 1] = str(toy_data)
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "held-out MLM loss" in result.output
    assert results.trial_status(tmp_path / "run") is TrialStatus.OK
