"""What a run records of the software it ran with."""

import subprocess
from pathlib import Path

import pandas as pd
import torch

import crammit
from crammit.study.results import _versions, mixed_versions
from crammit.train import rundir
from crammit.versions import RECORDED, describe, versions


def test_versions_name_the_libraries_and_crammits_commit():
    found = versions()
    assert tuple(found) == RECORDED
    assert found["torch"] == torch.__version__
    root = Path(crammit.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    expected = head.stdout.strip() if head.returncode == 0 else crammit.__version__
    assert found["crammit"].startswith(expected)


def test_a_study_warns_when_its_trials_ran_with_different_versions(tmp_path):
    old, new = ({**versions(), "torch": torch_version} for torch_version in ("2.12.0", "2.13.0"))
    for name, attempts in (("a", [old]), ("b", [old, new]), ("c", [new])):
        rundir.record_attempt(tmp_path / name, {"launch": "x", "versions": attempts[0]})
        for attempt in attempts[1:]:
            rundir.record_attempt(tmp_path / name, {"launch": "y", "versions": attempt})
    ran = {name: _versions(tmp_path / name) for name in "abc"}
    assert ran["b"] == f"{describe(old)}; {describe(new)}"  # a resume with other software
    trials = pd.DataFrame({"trial": ["a", "b", "c", "d"], "versions": [ran["a"], ran["b"], ran["c"], None]})
    warning = mixed_versions(trials)
    assert warning.startswith("warning: the trials ran with 3 different software versions (")
    assert f"a: {describe(old)};" in warning and f"c: {describe(new)}" in warning
    assert mixed_versions(trials.iloc[[0, 3]]) is None  # one version (and a trial not started)
