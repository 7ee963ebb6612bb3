"""One tiny run trained once, for the tests that read its run directory and checkpoints."""

from __future__ import annotations

import pytest

from crammit.config import TrainConfig
from crammit.train import rundir
from crammit.train.run import launch, prepare_run
from tests.helpers import tiny_train_config


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory, corpus_file, toy_data, toy_ingest
                     ) -> tuple[TrainConfig, rundir.FinalResults]:
    """A finished tiny run under ZeRO stage 2 that evaluates after every step, profiles two
    steady steps, and checkpoints every 3 steps keeping 2: its config and final results.
    A test that changes the run directory works on a copy."""
    run = tmp_path_factory.mktemp("checkpointed") / "run"
    config = tiny_train_config(run, corpus_file, data=str(toy_data), zero_stage=2, checkpoint_every_steps=3,
                               keep_checkpoints=2, eval_every_s=1e-9, profile_steps=2)
    config = prepare_run(config)
    return config, launch(config, in_process=True, data=toy_ingest)
