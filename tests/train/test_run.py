"""Ray Train end to end on 2 CPU workers (gloo), sharing one local Ray cluster."""

import dataclasses
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from crammit.config import Budget, RecipeConfig, TrainConfig
from crammit.data.layout import shard_paths
from crammit.model.bert import IGNORE_INDEX
from crammit.train import rundir
from crammit.train.data import training_data
from crammit.train.run import connect, ingest, launch, model_for, prepare_run
from tests.helpers import tiny_train_config

STEPS = 20


@pytest.mark.slow
def test_two_workers_follow_the_loss_curve_of_one_with_the_same_global_batch(
    tmp_path, corpus_file, cache_dir, ray_session
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


def _originals(batch) -> np.ndarray:
    """The sequence before masking: labels hold the masked positions' true tokens."""
    return torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids).numpy()


def _prepared_run_config(run_dir, prepared_corpus, **changes):
    out, corpus, _ = prepared_corpus
    model = dataclasses.replace(model_for("tiny", out), num_layers=2)
    return tiny_train_config(run_dir, corpus, data=str(out), model=model, **changes)


@pytest.mark.slow
def test_two_workers_read_disjoint_shards_of_a_prepared_directory(tmp_path, prepared_corpus):
    out, _, manifest = prepared_corpus
    micro = 8
    config = _prepared_run_config(tmp_path / "run", prepared_corpus, num_workers=2)
    per_worker = manifest["train_sequences"] // (2 * micro)  # one epoch, drop_last aside

    def read_one_epoch(config_dict):
        rank = ray.train.get_context().get_world_rank()
        train, _ = training_data(TrainConfig.from_dict(config_dict), rank, 2, sequences_done=0)
        rows = [_originals(next(train)) for _ in range(per_worker)]
        np.save(tmp_path / f"rank{rank}.npy", np.concatenate(rows))

    TorchTrainer(read_one_epoch, train_loop_config=config.to_dict(),
                 **ingest(out),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    seen = [np.load(tmp_path / f"rank{rank}.npy") for rank in (0, 1)]
    shards = [pq.read_table(path)["input_ids"].combine_chunks().flatten() for path in shard_paths(out)]
    available = Counter(map(bytes, np.concatenate(shards).astype(np.int64).reshape(-1, 32)))
    read = Counter(map(bytes, np.concatenate(seen)))
    assert sum(read.values()) == 2 * per_worker * micro
    assert all(count <= available[row] for row, count in read.items())  # nothing read twice


@pytest.mark.slow
def test_training_on_a_prepared_directory_with_two_workers(tmp_path, prepared_corpus, cache_dir, ray_session):
    config = _prepared_run_config(tmp_path / "run", prepared_corpus, num_workers=2,
                                  budget=Budget.tokens(30 * 16 * 32))
    connect(config)
    prepare_run(config, cache_dir)
    final = launch(config)
    assert final["steps"] == 30 and final["eval_loss"] < final["initial_eval_loss"]
    tokenizer = (tmp_path / "run" / "tokenizer.json").read_bytes()
    assert tokenizer == (prepared_corpus[0] / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_resuming_a_prepared_directory_run_continues_each_workers_stream(tmp_path, prepared_corpus):
    """A resumed run skips the micro-batches its checkpoint says were consumed: each
    worker's stream from `sequences_done` equals the rest of the stream from 0."""
    out, _, _ = prepared_corpus
    micro, consumed = 8, 5
    config = _prepared_run_config(tmp_path / "run", prepared_corpus, num_workers=2)

    def read_twice(config_dict):
        rank = ray.train.get_context().get_world_rank()
        config = TrainConfig.from_dict(config_dict)
        whole, _ = training_data(config, rank, 2, sequences_done=0)
        first = [next(whole) for _ in range(consumed + 3)]
        resumed, _ = training_data(config, rank, 2, sequences_done=consumed * micro * 2)
        again = [next(resumed) for _ in range(3)]
        for before, after in zip(first[consumed:], again, strict=True):
            torch.testing.assert_close(after.input_ids, before.input_ids, rtol=0, atol=0)
            torch.testing.assert_close(after.labels, before.labels, rtol=0, atol=0)
        (tmp_path / f"rank{rank}.ok").touch()

    TorchTrainer(read_twice, train_loop_config=config.to_dict(),
                 **ingest(out),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()
