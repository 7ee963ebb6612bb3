"""Checkpoints: DeepSpeed's model/optimizer shards plus crammit's position and RNG state.

`checkpoints/latest` names the newest complete checkpoint and is written (atomically)
only after every rank has finished saving, so an interrupted save is never resumed from.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crammit.io import atomic_path
from crammit.train.state import TrainState

LATEST = "latest"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_tag(run_dir: Path) -> str | None:
    pointer = checkpoint_dir(run_dir) / LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def save_checkpoint(engine, run_dir: Path, state: TrainState, keep: int) -> None:
    """Every rank calls this (DeepSpeed saves each rank's shard)."""
    rank = dist.get_rank()
    tag = f"step-{state.step:08d}"
    root = checkpoint_dir(run_dir)
    engine.save_checkpoint(str(root), tag=tag, client_state={"train_state": state.to_dict()},
                           save_latest=False)
    with atomic_path(root / tag / f"rng-rank{rank}.pt") as tmp:
        torch.save(_rng_state(), tmp)
    dist.barrier()
    if rank == 0:
        with atomic_path(root / LATEST) as tmp:
            tmp.write_text(tag)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def load_checkpoint(engine, run_dir: Path) -> TrainState | None:
    """Restore the newest complete checkpoint into `engine`; None when there is none."""
    tag = latest_tag(run_dir)
    if tag is None:
        return None
    _, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    rng_file = checkpoint_dir(run_dir) / tag / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**client_state["train_state"])


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
