"""Ray Train end to end: 2 CPU workers (gloo) against 1, sharing one local Ray cluster."""

import numpy as np
import pytest

from crammit.config import Budget, RecipeConfig
from crammit.train import rundir
from crammit.train.run import connect, launch, prepare_run
from tests.helpers import tiny_train_config

STEPS = 20


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.shutdown()  # a CLI test may have started a default cluster in this process
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_follow_the_loss_curve_of_one_with_the_same_global_batch(
    tmp_path, corpus_file, cache_dir, ray_cluster
):
    curves = {}
    for workers, micro_batch in ((1, 16), (2, 8)):
        config = tiny_train_config(
            tmp_path / f"workers-{workers}", corpus_file, num_workers=workers,
            recipe=RecipeConfig(batch_size=16, micro_batch_size=micro_batch),
            budget=Budget.tokens(STEPS * 16 * 128),
        )
        connect(config)
        prepare_run(config, cache_dir)
        final = launch(config)
        curves[workers] = rundir.read_metrics(tmp_path / f"workers-{workers}")["loss"].to_numpy()
        assert final["steps"] == STEPS
    assert len(curves[1]) == len(curves[2]) == STEPS
    assert curves[1][-1] < curves[1][0] - 0.5  # it learned something
    np.testing.assert_allclose(curves[2], curves[1], rtol=0, atol=1e-4)
