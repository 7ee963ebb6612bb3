"""The DeepSpeed engine: the config the trainer builds, user overrides, initialisation.

One engine on every machine: ZeRO and bf16 on GPUs, fp32 on CPUs (bf16 matmuls are
hundreds of times slower there), gloo or NCCL underneath.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from crammit.config import ZERO_STAGES, Device, TrainConfig
from crammit.errors import CrammitError
from crammit.train.recipe import optimizer

# The batch ramp owns the global batch: it changes accumulation at run time.
RAMP_OWNED_KEYS = ("train_batch_size", "gradient_accumulation_steps")


def read_deepspeed_file(path: Path) -> dict[str, Any]:
    """A user's DeepSpeed JSON, checked for what crammit cannot honour."""
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CrammitError(f"cannot read --deepspeed-config {path}: {error}") from None
    if not isinstance(overrides, dict):
        raise CrammitError(f"--deepspeed-config {path} must hold a JSON object")
    owned = [key for key in RAMP_OWNED_KEYS if key in overrides]
    if owned:
        raise CrammitError(
            f"--deepspeed-config sets {', '.join(owned)}, which the batch ramp controls; "
            "remove them and use --batch-size / --micro-batch"
        )
    stage = overrides.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise CrammitError(f"ZeRO stage {stage} is not supported; use one of {ZERO_STAGES}")
    return overrides


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """The engine settings for this run; `config.deepspeed_overrides` wins key by key."""
    built = {
        "train_micro_batch_size_per_gpu": config.recipe.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.recipe.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": config.device == Device.CUDA},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # crammit reports progress itself
    }
    return _merge(built, config.deepspeed_overrides)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@contextmanager
def process_group(device: Device) -> Iterator[None]:
    """Ray Train workers come with a process group; a plain process (Ray Train's local
    mode, tests, notebooks, benchmarks) gets a one-member group for the duration, so the
    engine is the same everywhere. It is torn down through DeepSpeed, which releases the
    groups it derived from it (a later group in the same process starts clean)."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # DeepSpeed reads the launcher's variables, so set them as a launcher would.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device == Device.CUDA else "gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:  # no engine was made (an error came first): DeepSpeed never took the group over
            dist.destroy_process_group()


def torch_device(device: Device) -> torch.device:
    if device == Device.CUDA:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def import_deepspeed():
    """`import deepspeed`, late (it probes accelerators and logs on import) and with MLflow
    hidden from it: DeepSpeed's autotuner, which crammit does not use, imports MLflow where
    it is installed, a second of every training worker's start-up. MLflow stays importable
    for crammit's own tracking."""
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while this is set
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed


# DeepSpeed's CPU backend compiles this op (a shared-memory all-reduce) when it starts, for
# `inference_all_reduce`, which only tensor-parallel inference calls; training reduces through
# the process group. The compile is half a minute of the first run on every fresh install.
INFERENCE_ALL_REDUCE_OP = "deepspeed_shm_comm"


def create_engine(model: nn.Module, config: TrainConfig):
    """Wrap the model in a DeepSpeed engine with the recipe's AdamW (compiling its blocks
    when the config asks), inside a `process_group`; on CPU, without DeepSpeed's inference
    all-reduce op."""
    deepspeed = import_deepspeed()

    if config.device == Device.CPU:
        # DeepSpeed builds and loads only the ops this table (probed once a process, on first
        # use) calls compatible. The GPU backend has no such op, and is left unprobed.
        deepspeed.ops.__compatible_ops__[INFERENCE_ALL_REDUCE_OP] = False
    if config.device == Device.CUDA:
        # Launchers (Ray Train, torchrun) give each process its GPU through LOCAL_RANK.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if config.compile:
        model.compile_blocks()
    model.to(torch_device(config.device))
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer(model, config.recipe, fused=config.device == Device.CUDA),
        config=deepspeed_config(config),
        dist_init_required=False,
    )
    return engine


def set_learning_rate(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
