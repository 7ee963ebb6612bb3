"""The analysis side (the study table, fits, plots, recommendations, GLUE summaries) imports
neither Ray nor torch, so `study fit`, `study plot` and the notebook start without them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import crammit.study

DRIVERS = {"sweep"}  # the study's Tune driver: Ray is its job
ANALYSIS = sorted({f"crammit.study.{module.name}" for module in pkgutil.iter_modules(crammit.study.__path__)
                   if module.name not in DRIVERS} | {"crammit.eval.glue_results", "crammit.cli"})


def test_analysis_modules_load_neither_ray_nor_torch():
    # A fresh interpreter: this test session has loaded both already.
    check = (f"import sys, {', '.join(ANALYSIS)}\n"
             "print(' '.join(name for name in ('ray', 'torch') if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert "crammit.study.results" in ANALYSIS and "crammit.study.fit" in ANALYSIS
    assert loaded.stdout.strip() == ""
