"""Property-based: whatever numbers and paths `crammit train` is given, it either gets as far
as launching the run or stops with one `error:` line and exit code 2 — never a traceback."""

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from crammit import cli
from crammit.train import run


class WouldTrain(Exception):
    """Raised in place of launching: the arguments were accepted."""


def number_text(values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda value: repr(value) if isinstance(value, float) else str(value))


FLOATS = number_text(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                               st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, math.nan, 0.001])))
INTS = number_text(st.one_of(st.integers(-10, 10), st.integers(-(2**70), 2**70),
                             st.sampled_from([8, 16, 64, 2**24])))
OPTIONS = {"--hours": FLOATS, "--tokens": FLOATS, "--lr": FLOATS, "--eval-minutes": FLOATS,
           "--checkpoint-minutes": FLOATS, "--batch-size": INTS, "--micro-batch": INTS, "--workers": INTS,
           "--zero-stage": INTS, "--max-failures": INTS, "--max-eval-sequences": INTS, "--seed": INTS}


@pytest.fixture
def no_launch(monkeypatch):
    monkeypatch.setattr(run, "connect", lambda config, address=None: None)

    def launch(config, **_):
        raise WouldTrain

    monkeypatch.setattr(run, "launch", launch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), min_size=1, max_size=4).flatmap(
           lambda keys: st.fixed_dictionaries({key: OPTIONS[key] for key in keys})),
       data_choice=st.sampled_from(["prepared", "missing", "empty-dir", "a-file"]),
       out_choice=st.sampled_from(["fresh", "read-only", "under-a-file"]))
def test_numbers_and_paths_give_a_run_or_one_line(tmp_path_factory, toy_data, no_launch, chosen, data_choice,
                                                  out_choice):
    root = tmp_path_factory.mktemp("case")
    (root / "a-file").write_text("not a directory")
    (root / "empty-dir").mkdir()
    data = {"prepared": toy_data, "missing": root / "missing", "empty-dir": root / "empty-dir",
            "a-file": root / "a-file"}[data_choice]
    out = {"fresh": root / "run", "read-only": "/proc/crammit-run", "under-a-file": root / "a-file" / "run"}
    arguments = list(itertools.chain.from_iterable(chosen.items()))
    result = CliRunner().invoke(cli.app, ["train", "--gpus", "0", "--size", "tiny", "--data", str(data),
                                          "--out", str(out[out_choice]), *arguments])
    if isinstance(result.exception, WouldTrain):
        return
    assert result.exit_code == 2, (arguments, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output
    # typer's own usage errors (a value that is not a number) draw a box instead of `error:`
    assert len(errors) == 1 or "Invalid value" in result.output, result.output
