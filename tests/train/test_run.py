"""Ray Train end to end on 2 CPU workers (gloo), sharing one local Ray cluster."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
import torch.distributed as dist
from ray.data.dataset import MaterializedDataset
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file
from tokenizers import Tokenizer
from typer.testing import CliRunner

from crammit.cli import app
from crammit.config import Arch, Budget, RecipeConfig, TrainConfig
from crammit.data.layout import TOKENIZER, model_for, read_manifest, sequence_rows, shard_paths
from crammit.data.loader import HeldOutBatches
from crammit.data.tokenizer import SpecialIds
from crammit.model.bert import IGNORE_INDEX
from crammit.model.build import build_model
from crammit.train import rundir
from crammit.train.checkpoint import latest_tag
from crammit.train.engine import create_engine, process_group, set_learning_rate
from crammit.train.ingest import OBJECT_STORE_SHARE, ingest, training_data
from crammit.train.loop import train_step
from crammit.train.run import launch, prepare_run
from tests.helpers import tiny_train_config

STEPS = 20


def _steps_on_fixed_global_batches(config_dict):
    """STEPS optimizer steps of each arch over the same global batches whatever the worker
    count (each rank takes its slice); rank 0 saves each arch's global loss of each step."""
    config = TrainConfig.from_dict(config_dict)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    data = Path(config.data)
    batches = HeldOutBatches(sequence_rows(pq.read_table(shard_paths(data)[0])),
                             SpecialIds.of(Tokenizer.from_file(str(data / TOKENIZER))),
                             config.model.vocab_size, config.recipe.mask_rate, seed=0)
    micro = config.recipe.micro_batch_size
    with process_group(config.device):  # Ray Train's local mode (the 1-worker reference) has none
        for arch in Arch:  # one fit for both: starting the workers costs more than their steps
            arch_config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch))
            torch.manual_seed(0)
            engine = create_engine(build_model(arch_config.model), arch_config)
            set_learning_rate(engine, config.recipe.peak_lr)
            losses = []
            for step in range(STEPS):
                engine.set_train_batch_size(micro * world_size)
                batch = batches.batch(step * micro * world_size, micro, rank, world_size)
                share = train_step(engine, [batch], world_size, torch.device("cpu"))
                dist.all_reduce(share)
                losses.append(share.item())
            if rank == 0:
                np.save(Path(config.run_dir) / f"losses-{arch.value}.npy", np.array(losses))


@pytest.mark.slow
def test_two_workers_make_the_steps_of_one_with_the_same_global_batch(tmp_path, corpus_file, toy_data):
    """For each arch (without dropout): 1 worker x micro-batch 16 and 2 workers x 8 make the
    same steps."""
    curves = {}
    for workers, micro_batch in ((1, 16), (2, 8)):
        run_dir = tmp_path / f"workers-{workers}"
        run_dir.mkdir()
        config = tiny_train_config(run_dir, corpus_file, data=str(toy_data), num_workers=workers,
                                   recipe=RecipeConfig(batch_size=16, micro_batch_size=micro_batch))
        TorchTrainer(_steps_on_fixed_global_batches, train_loop_config=config.to_dict(),
                     # One worker is Ray Train's local mode: this process, without starting actors.
                     scaling_config=ScalingConfig(num_workers=0 if workers == 1 else workers,
                                                  resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
        for arch in Arch:
            curves[arch, workers] = np.load(run_dir / f"losses-{arch.value}.npy")
    for arch in Arch:
        one, two = curves[arch, 1], curves[arch, 2]
        assert len(one) == len(two) == STEPS, arch
        assert one[-1] < one[0] - 0.5, arch  # it learned something
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-4, err_msg=arch.value)


def _originals(batch) -> np.ndarray:
    """The sequence before masking: labels hold the masked positions' true tokens."""
    return torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids).numpy()


def _prepared_run_config(run_dir, prepared_corpus, **changes):
    out, corpus, _ = prepared_corpus
    model = dataclasses.replace(model_for("tiny", out), num_layers=2)
    return tiny_train_config(run_dir, corpus, data=str(out), model=model, **changes)


@pytest.mark.slow
@pytest.mark.parametrize("object_store_share", [0.0, OBJECT_STORE_SHARE], ids=["streamed", "held"])
def test_two_workers_read_disjoint_shards_of_a_prepared_directory_and_resume_their_streams(
    tmp_path, prepared_corpus, object_store_share,
):
    """Each worker reads its own part of an epoch; and (the data held in the object store, as
    a small corpus is) a resumed run skips the micro-batches its checkpoint says were
    consumed: each worker's stream from `sequences_done` equals the rest of its stream from 0."""
    out, _, manifest = prepared_corpus
    micro, consumed = 8, 5
    config = _prepared_run_config(tmp_path / "run", prepared_corpus, num_workers=2)
    per_worker = manifest["train_sequences"] // (2 * micro)  # one epoch, drop_last aside
    assert per_worker >= consumed + 3

    def read_one_epoch_then_resume(config_dict):
        rank = ray.train.get_context().get_world_rank()
        config = TrainConfig.from_dict(config_dict)
        train, _ = training_data(config, rank, 2, sequences_done=0)
        batches = [next(train) for _ in range(per_worker)]
        np.save(tmp_path / f"rank{rank}.npy", np.concatenate([_originals(batch) for batch in batches]))
        if not object_store_share:  # a streamed split is read once an epoch: Ray Data refuses a second reader
            return
        resumed, _ = training_data(config, rank, 2, sequences_done=consumed * micro * 2)
        for before in batches[consumed:consumed + 3]:
            after = next(resumed)
            torch.testing.assert_close(after.input_ids, before.input_ids, rtol=0, atol=0)
            torch.testing.assert_close(after.labels, before.labels, rtol=0, atol=0)
        (tmp_path / f"rank{rank}.resumed").touch()

    arguments = ingest(out, object_store_share)
    assert isinstance(arguments["datasets"]["train"], MaterializedDataset) == (object_store_share > 0)
    TorchTrainer(read_one_epoch_then_resume, train_loop_config=config.to_dict(),
                 **arguments,
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    seen = [np.load(tmp_path / f"rank{rank}.npy") for rank in (0, 1)]
    shards = [pq.read_table(path)["input_ids"].combine_chunks().flatten() for path in shard_paths(out)]
    available = Counter(map(bytes, np.concatenate(shards).astype(np.int64).reshape(-1, 32)))
    read = Counter(map(bytes, np.concatenate(seen)))
    assert sum(read.values()) == 2 * per_worker * micro
    assert all(count <= available[row] for row, count in read.items())  # nothing read twice
    resumed = [(tmp_path / f"rank{rank}.resumed").exists() for rank in (0, 1)]
    assert resumed == [bool(object_store_share)] * 2


@pytest.mark.slow
def test_eight_cpu_workers_train_and_evaluate_on_the_embedded_corpus(tmp_path, embedded_cache, ray_session):
    """`crammit train --gpus 0 --workers 8` with the default micro-batch (128) on the embedded
    corpus: its held-out set is smaller than one micro-batch per worker, and every held-out
    sequence is evaluated once."""
    micro = RecipeConfig().micro_batch_size
    result = CliRunner().invoke(app, [
        "train", "--gpus", "0", "--workers", "8", "--size", "micro", "--tokens", str(8 * micro * 128),
        "--out", str(tmp_path / "run"), "--cache-dir", str(embedded_cache[0]),
        "--address", ray.get_runtime_context().gcs_address])
    assert result.exit_code == 0, result.output
    final = rundir.read_final(tmp_path / "run")
    config = rundir.load_config(tmp_path / "run")  # without --data, the corpus is prepared into the run
    assert Path(config.data) == (tmp_path / "run" / rundir.DATA_DIR).resolve()
    manifest = read_manifest(Path(config.data))
    held_out = manifest["eval_sequences"]
    assert manifest["source"] == "embedded" and held_out < 8 * micro
    assert manifest["source_sha256"] == embedded_cache[1].sha256
    assert final.steps == 1 and final.eval_sequences == held_out
    assert final.eval_loss < final.initial_eval_loss


def _train_worker_pids() -> list[int]:
    """Processes Ray titles `ray::RayTrainWorker...` (Ray Train's worker actors)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


@pytest.mark.slow
def test_a_killed_worker_is_restarted_from_the_last_checkpoint_within_the_budget(
    tmp_path, corpus_file, toy_data, toy_ingest, ray_session,
):
    budget_s = 30.0
    config = tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data), num_workers=2,
                               budget=Budget.hours(budget_s / 3600), checkpoint_every_steps=20,
                               max_failures=2)
    config = prepare_run(config)
    run_dir = Path(config.run_dir)
    killed: list[int] = []

    def kill_one_worker_after_the_first_checkpoint():
        deadline = time.monotonic() + 120
        while latest_tag(run_dir) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # a few steps past it: their work is lost
        pid = _train_worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    final = launch(config, data=toy_ingest)
    killer.join()
    assert killed, "no worker was killed"
    attempts = rundir.read_attempts(run_dir)
    assert len(attempts) == 2 and attempts[1]["restart_after_failure"] and attempts[1]["lost_s"] > 2
    metrics = rundir.read_metrics(run_dir)
    assert metrics["step"].tolist() == list(range(1, final.steps + 1))
    assert metrics.query("attempt == 2")["step"].iloc[0] == attempts[1]["resumed_at_step"] + 1 > 1
    # Within the budget: no step starts after it (a step's length depends on the machine's load).
    assert metrics["elapsed_s"].iloc[-2] < budget_s and final.elapsed_s >= 0.95 * budget_s


@pytest.mark.slow
def test_two_workers_follow_one_workers_curve_on_the_path_users_run(
    tmp_path, corpus_file, toy_data, toy_ingest, ray_session,
):
    """`train_loop` through Ray Train on streamed shards, with the ramp and the schedule:
    1 worker × micro-batch 16 and 2 workers × 8 take the same global steps (batch sizes,
    learning rates, tokens), and their losses agree within what a different order of the
    same data moves them (each worker streams its own shard)."""
    runs = {}
    for workers, micro in ((1, 16), (2, 8)):
        recipe = RecipeConfig(batch_size=64, micro_batch_size=micro)
        config = tiny_train_config(tmp_path / f"workers{workers}", corpus_file, data=str(toy_data),
                                   num_workers=workers, recipe=recipe, budget=Budget.tokens(30 * 32 * 128),
                                   deterministic=True)
        runs[workers] = (launch(prepare_run(config), data=toy_ingest),
                         rundir.read_metrics(Path(config.run_dir)))
    (one, one_steps), (two, two_steps) = runs[1], runs[2]
    assert (tmp_path / "workers2" / TOKENIZER).read_bytes() == (toy_data / TOKENIZER).read_bytes()
    for column in ("batch_size", "lr", "tokens"):
        assert one_steps[column].tolist() == two_steps[column].tolist()
    assert one_steps["batch_size"].iloc[0] < one_steps["batch_size"].iloc[-1]  # the ramp ran
    assert two.eval_loss < two.initial_eval_loss - 1.0
    assert two.eval_loss == pytest.approx(one.eval_loss, rel=0.05)
    late = slice(len(one_steps) // 2, None)
    assert two_steps["loss"][late].mean() == pytest.approx(one_steps["loss"][late].mean(), rel=0.05)


@pytest.mark.slow
def test_a_killed_driver_resumes_from_its_checkpoint_to_the_same_parameters(tmp_path, toy_data, toy_ingest,
                                                                            ray_session):
    """`kill -9` of `crammit train` after its first checkpoint, then `--resume`: the second
    attempt starts at the checkpoint's step + 1, metrics stay one row per step, and the
    model equals an uninterrupted run's (a token budget and deterministic kernels)."""
    address = ray.get_runtime_context().gcs_address
    flags = ["--gpus", "0", "--size", "tiny", "--data", str(toy_data), "--tokens", str(48 * 16 * 128),
             "--batch-size", "16", "--micro-batch", "8", "--max-eval-sequences", "32", "--deterministic",
             "--checkpoint-minutes", "0.02", "--address", address]
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen([str(Path(sys.executable).parent / "crammit"), "train", *flags,
                                   "--out", str(interrupted)],
                                  stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while latest_tag(interrupted) is None and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.kill()  # SIGKILL: no chance to clean up, as in a preemption
        driver.wait()
    assert latest_tag(interrupted) is not None, (tmp_path / "driver.log").read_text()
    assert not (interrupted / rundir.FINAL_FILE).exists(), "run ended before the kill"
    checkpoint_step = int(latest_tag(interrupted).removeprefix("step-"))

    resumed = CliRunner().invoke(app, ["train", "--resume", str(interrupted), "--address", address])
    assert resumed.exit_code == 0, resumed.output
    attempts = rundir.read_attempts(interrupted)
    assert [a["resumed_at_step"] for a in attempts] == [0, checkpoint_step] > [0, 0]
    assert not attempts[1]["restart_after_failure"]
    metrics = rundir.read_metrics(interrupted)
    assert metrics["step"].tolist() == list(range(1, len(metrics) + 1))
    assert metrics.query("attempt == 2")["step"].iloc[0] == checkpoint_step + 1

    # The same run without the interruption (in this process: same code, same thread count).
    same = dataclasses.replace(rundir.load_config(interrupted), run_dir=str(straight))
    launch(prepare_run(same), in_process=True, data=toy_ingest)
    assert rundir.read_final(interrupted).tokens == rundir.read_final(straight).tokens
    a, b = (load_file(run / rundir.MODEL_FILE) for run in (straight, interrupted))
    assert all((a[name] == b[name]).all() for name in a)
    assert rundir.read_metrics(straight)["loss"].tolist() == metrics["loss"].tolist()
