import json

import pytest

from crammit.config import Device, TrainConfig
from crammit.errors import CrammitError
from crammit.train import rundir
from crammit.train.checkpoint import checkpoint_dir, latest_tag
from crammit.train.engine import deepspeed_config, read_deepspeed_file
from crammit.train.run import launch, prepare_run
from tests.helpers import tiny_train_config


def test_built_config_follows_the_device_and_recipe():
    cpu = deepspeed_config(TrainConfig(run_dir="", device=Device.CPU, zero_stage=1))
    assert cpu["bf16"] == {"enabled": False} and cpu["zero_optimization"] == {"stage": 1}
    assert cpu["gradient_clipping"] == 0.5 and cpu["train_micro_batch_size_per_gpu"] == 128
    assert deepspeed_config(TrainConfig(run_dir=""))["bf16"] == {"enabled": True}


def test_user_file_overrides_key_by_key(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True},
                                "gradient_clipping": 1.0}))
    merged = deepspeed_config(TrainConfig(run_dir="", deepspeed_overrides=read_deepspeed_file(path)))
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert merged["gradient_clipping"] == 1.0 and merged["bf16"] == {"enabled": True}


def test_unsupported_zero_stage_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(CrammitError, match="ZeRO stage 3"):
        read_deepspeed_file(path)


def test_zero_stage_two_trains_and_keeps_only_recent_checkpoints(tmp_path, corpus_file, cache_dir, toy_data):
    config = tiny_train_config(tmp_path / "run", corpus_file, zero_stage=2, checkpoint_every_steps=3,
                               keep_checkpoints=2, data=str(toy_data))
    results = launch(prepare_run(config, cache_dir), in_process=True)
    assert results.eval_loss < results.initial_eval_loss
    tags = sorted(p.name for p in checkpoint_dir(tmp_path / "run").glob("step-*"))
    assert len(tags) == 2 and latest_tag(tmp_path / "run") == tags[-1] == f"step-{results.steps:08d}"
    assert rundir.read_metrics(tmp_path / "run")["step"].iloc[-1] == results.steps
