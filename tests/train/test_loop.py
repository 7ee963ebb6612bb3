"""The training loop in one process (Ray Train's local mode), on a tiny model."""

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertForMaskedLM

from crammit.config import Arch, Budget, RecipeConfig, recipe_config
from crammit.data.layout import EVAL_FILE, TOKENIZER, sequence_rows, shard_paths
from crammit.data.loader import HeldOutBatches, MaskedBatch
from crammit.data.tokenizer import SpecialIds
from crammit.errors import CrammitError
from crammit.model.bert import IGNORE_INDEX, CrammedBert
from crammit.train import rundir
from crammit.train.checkpoint import checkpoint_dir
from crammit.train.engine import create_engine, process_group
from crammit.train.loop import train_step
from crammit.train.profile import PHASES, PROFILE_DIR, SUMMARY_JSON
from crammit.train.run import launch, prepare_run
from crammit.versions import versions
from tests.helpers import tiny_train_config


def test_hours_budget_ends_the_run_within_five_percent(tmp_path, corpus_file, toy_data,
                                                       toy_ingest):
    budget_s = 10.0  # long enough that one slow step on a busy machine stays within 5 %
    config = tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data),
                               budget=Budget.hours(budget_s / 3600))
    config = prepare_run(config)
    results = launch(config, in_process=True, data=toy_ingest)
    # It ends at the micro-batch boundary nearest the budget: a little before it, or after.
    assert 0.95 * budget_s <= results.elapsed_s <= 1.05 * budget_s
    metrics = rundir.read_metrics(tmp_path / "run")
    assert (metrics["elapsed_s"].iloc[:-1] < budget_s).all()  # no step started after the budget


def test_run_directory_holds_metrics_final_model_and_results(checkpointed_run):
    config, results = checkpointed_run  # evaluated after every step (eval_every_s ~ 0), 2 steps profiled
    run_dir = Path(config.run_dir)
    metrics = rundir.read_metrics(run_dir)
    for column in ("step", "tokens", "flops", "elapsed_s", "loss", "lr", "batch_size", "tokens_per_s"):
        assert column in metrics.columns
    assert metrics["step"].tolist() == list(range(1, results.steps + 1))
    assert metrics["tokens"].iloc[-1] == results.tokens >= 10 * 16 * 128
    assert metrics["batch_size"].iloc[:-1].is_monotonic_increasing  # the budget may cut the last step short
    final = rundir.read_final(run_dir)
    assert final.eval_loss < final.initial_eval_loss
    assert set(load_file(run_dir / rundir.MODEL_FILE)) >= {"embeddings.tokens.weight"}
    assert (run_dir / "tokenizer.json").exists() and (run_dir / rundir.MODEL_CONFIG_FILE).exists()
    assert rundir.load_config(run_dir) == config
    # An evaluation before the first step, after every step (eval_every_s ~ 0), none repeated at the end.
    evals = rundir.read_evals(run_dir)
    assert evals["step"].tolist() == list(range(0, results.steps + 1))
    assert evals["eval_loss"].iloc[0] == final.initial_eval_loss
    assert evals["eval_loss"].iloc[-1] == final.eval_loss
    assert evals["elapsed_s"].iloc[1:].tolist() == metrics["elapsed_s"].tolist()
    # Two steady steps traced: every phase of a step appears in the summary.
    profile = json.loads((run_dir / PROFILE_DIR / SUMMARY_JSON).read_text())
    assert profile["steps"] == 2 and set(profile["phase_ms"]) == set(PHASES)


def test_the_original_bert_arm_trains_and_saves_a_model_hugging_face_loads(tmp_path, corpus_file,
                                                                          toy_data, toy_ingest):
    model = dataclasses.replace(tiny_train_config(tmp_path, corpus_file).model, arch=Arch.BERT, dropout=0.1)
    config = tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data), model=model,
                               recipe=recipe_config("bert", batch_size=16, micro_batch_size=8))
    config = prepare_run(config)
    results = launch(config, in_process=True, data=toy_ingest)
    run_dir = Path(config.run_dir)
    assert results.eval_loss < results.initial_eval_loss and results.eval_mask_rate == 0.15
    assert rundir.final_model_config(run_dir) == config.model

    # The same held-out batches through Hugging Face's own model, loaded from RUN_DIR/hf.
    hf = BertForMaskedLM.from_pretrained(run_dir / rundir.HF_DIR).eval()
    held_out = HeldOutBatches(sequence_rows(pq.read_table(toy_data / EVAL_FILE))[:config.max_eval_sequences],
                              SpecialIds.of(Tokenizer.from_file(str(toy_data / TOKENIZER))),
                              config.model.vocab_size, results.eval_mask_rate, config.recipe.seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in held_out.rank_batches(config.recipe.micro_batch_size, 0, 1):
            logits = hf(input_ids=batch.input_ids).logits
            masked = batch.labels != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(logits[masked], batch.labels[masked], reduction="sum")
            count += int(masked.sum())
    assert float(total / count) == pytest.approx(results.eval_loss, rel=1e-5)


def test_accumulated_micro_batches_make_the_same_steps_as_whole_batches(tmp_path, corpus_file, toy_data):
    """The ramp changes accumulation every step; each step must still be one optimizer
    update over exactly its micro-batches (DeepSpeed's own counter would misalign)."""
    config = tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data))
    special = SpecialIds.of(Tokenizer.from_file(str(toy_data / TOKENIZER)))
    stream = HeldOutBatches(sequence_rows(pq.read_table(shard_paths(toy_data)[0])), special,
                            config.model.vocab_size, config.recipe.mask_rate, seed=0)
    micro, device = 8, torch.device("cpu")

    def train(whole: bool) -> tuple[list[float], dict]:
        torch.manual_seed(0)
        engine = create_engine(CrammedBert(config.model), config)
        losses, position = [], 0
        for accumulation in (1, 3, 2, 4):
            parts = [stream.batch(position + i * micro, micro, 0, 1) for i in range(accumulation)]
            position += accumulation * micro
            if whole:
                parts = [MaskedBatch(torch.cat([p.input_ids for p in parts]),
                                     torch.cat([p.labels for p in parts]))]
            engine.set_train_batch_size(len(parts) * micro)
            losses.append(train_step(engine, parts, 1, device).item())
        assert engine.global_steps == 4
        return losses, {name: p.detach().clone() for name, p in engine.module.named_parameters()}

    with process_group(config.device):
        (split_losses, split), (whole_losses, whole) = train(whole=False), train(whole=True)
    assert split_losses == pytest.approx(whole_losses, abs=1e-5)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-5, rtol=0, msg=name)


def test_a_token_budget_stops_exactly_by_cutting_the_last_step_short(tmp_path, corpus_file,
                                                                      toy_data, toy_ingest):
    micro = 8
    recipe = RecipeConfig(batch_size=4 * micro, micro_batch_size=micro, ramp_end=0.0)
    config = tiny_train_config(tmp_path / "run", corpus_file, data=str(toy_data), recipe=recipe,
                               budget=Budget.tokens(10 * micro * 128))  # ten micro-batches
    results = launch(prepare_run(config), in_process=True, data=toy_ingest)
    assert rundir.read_metrics(tmp_path / "run")["batch_size"].tolist() == [32, 32, 16]
    assert results.tokens == 10 * micro * 128


def test_a_truncated_newest_checkpoint_is_reported_and_the_one_before_it_resumed(
    tmp_path, checkpointed_run, toy_ingest, capfd,
):
    trained, first = checkpointed_run  # checkpointed every 3 steps, the last two kept
    shutil.copytree(trained.run_dir, tmp_path / "run")  # damaged below: the shared run stays whole
    config = dataclasses.replace(trained, run_dir=str(tmp_path / "run"))
    root = checkpoint_dir(tmp_path / "run")
    previous, newest = sorted(p.name for p in root.glob("step-*"))
    victim = max((p for p in (root / newest).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    capfd.readouterr()

    second = launch(config, in_process=True, data=toy_ingest)
    reported = f"checkpoint {newest} is unusable ({victim.relative_to(root / newest)} has"
    assert reported in capfd.readouterr().err
    attempts = rundir.read_attempts(tmp_path / "run")
    assert attempts[-1]["versions"] == versions()  # what each start of the loop ran with
    resumed_at = attempts[-1]["resumed_at_step"]
    assert resumed_at == int(previous.removeprefix("step-"))
    assert second.steps == first.steps
    assert rundir.read_metrics(tmp_path / "run")["step"].tolist() == list(range(1, second.steps + 1))


def test_a_run_directory_that_cannot_be_written_is_one_clear_error(corpus_file, toy_data):
    unwritable = Path("/proc/crammit-run")  # read-only even for root
    with pytest.raises(CrammitError, match="cannot write the run directory /proc/crammit-run .*writable"):
        prepare_run(tiny_train_config(unwritable, corpus_file, data=str(toy_data)))


def final_results(**changes) -> rundir.FinalResults:
    values = dict(initial_eval_loss=10.5, eval_loss=4.25, steps=3, tokens=10240, flops=2.5e10, elapsed_s=3.75,
                  budget="10240 tokens", eval_sequences=32, eval_mask_rate=0.15, resumed_at_step=0,
                  worker_nodes=("node-a", "node-b"))
    return rundir.FinalResults(**{**values, **changes})


def test_final_results_are_written_as_the_json_they_always_were_and_read_back_typed(tmp_path):
    final = final_results()
    rundir.save_final(tmp_path, final)
    on_disk = json.loads((tmp_path / rundir.FINAL_FILE).read_text())
    assert on_disk["worker_nodes"] == ["node-a", "node-b"] and on_disk["steps"] == 3
    assert sorted(on_disk) == sorted(field.name for field in dataclasses.fields(rundir.FinalResults))
    assert rundir.read_final(tmp_path) == final
    # A whole-number float written by another JSON writer reads back as a float.
    (tmp_path / rundir.FINAL_FILE).write_text(json.dumps({**on_disk, "flops": 25000000000}))
    assert isinstance(rundir.read_final(tmp_path).flops, float)


@pytest.mark.parametrize(("change", "problem"), [
    ({"steps": None}, "no steps"),
    ({"extra": 1}, "unknown field extra"),
    ({"steps": 3.5}, "steps is 3.5, not a JSON int"),
    ({"eval_loss": "4.2"}, "eval_loss is '4.2', not a JSON float"),
    ({"tokens": True}, "tokens is True, not a JSON int"),
    ({"worker_nodes": [1]}, "worker_nodes is \\[1\\], not a list of strings"),
])
def test_a_final_json_that_does_not_fit_is_one_clear_error(tmp_path, change, problem):
    data = {**final_results().to_dict(), **change}
    data = {key: value for key, value in data.items() if value is not None}
    (tmp_path / rundir.FINAL_FILE).write_text(json.dumps(data))
    with pytest.raises(CrammitError, match=f"final.json is not .*\\({problem}\\)"):
        rundir.read_final(tmp_path)
