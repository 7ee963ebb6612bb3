import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crammit.config import Device, TrainConfig
from crammit.errors import CrammitError
from crammit.train import rundir
from crammit.train.checkpoint import checkpoint_dir, latest_tag
from crammit.train.engine import deepspeed_config, read_deepspeed_file


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


def test_zero_stage_two_trains_and_keeps_only_recent_checkpoints(checkpointed_run):
    config, results = checkpointed_run  # ZeRO stage 2, a checkpoint every 3 steps, 2 kept
    launch = config.launch
    assert (config.zero_stage, launch.checkpoint_every_steps, launch.keep_checkpoints) == (2, 3, 2)
    run_dir = Path(config.run_dir)
    assert results.eval_loss < results.initial_eval_loss
    tags = sorted(p.name for p in checkpoint_dir(run_dir).glob("step-*"))
    assert len(tags) == 2 and latest_tag(run_dir) == tags[-1] == f"step-{results.steps:08d}"
    assert rundir.read_metrics(run_dir)["step"].iloc[-1] == results.steps


def test_deepspeed_starts_without_mlflow_or_compiling_its_inference_all_reduce(tmp_path):
    """DeepSpeed's autotuner would import MLflow (a second of every worker's start-up), and its
    CPU backend would compile a shared-memory all-reduce that training never calls (half a
    minute on a fresh install): an engine starts with neither, and MLflow stays importable."""
    check = ("import sys, torch\n"
             "from crammit.config import Device, RecipeConfig, TrainConfig\n"
             "from crammit.train.engine import create_engine, process_group\n"
             "config = TrainConfig(run_dir='', device=Device.CPU, compile=False,\n"
             "                     recipe=RecipeConfig(batch_size=2, micro_batch_size=2))\n"
             "with process_group(Device.CPU):\n"
             "    engine = create_engine(torch.nn.Linear(4, 4), config)\n"
             "    engine.backward(engine(torch.ones(2, 4)).sum())\n"
             "    engine.step()\n"
             "assert not [name for name in sys.modules if name.split('.')[0] == 'mlflow']\n"
             "import mlflow\n")
    extensions = tmp_path / "torch_extensions"  # fresh: DeepSpeed would build its op here
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120, capture_output=True,
                   env={**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)})
    assert not list(extensions.glob("**/*.so"))
