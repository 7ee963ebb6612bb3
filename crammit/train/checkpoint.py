"""Checkpoints: DeepSpeed's model/optimizer shards plus crammit's position and RNG state.

Each checkpoint ends with `files.json`, the size of every file in it, written by rank 0
after every rank has saved; `checkpoints/latest` then names it. A resume loads the newest
checkpoint whose files are all there at their recorded sizes, so a save cut short (a killed
run, a full disk, a truncated copy) is reported and the one before it used; older
checkpoints are pruned only once a newer one is complete.
"""

from __future__ import annotations

import errno
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json
from crammit.train.state import TrainState

LATEST = "latest"
FILE_LIST = "files.json"
TAG_PREFIX = "step-"
LOW_SPACE_BYTES = 64 << 20  # a save that fails with less free space than this failed for want of it


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_tag(run_dir: Path) -> str | None:
    pointer = checkpoint_dir(run_dir) / LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def save_checkpoint(engine, run_dir: Path, state: TrainState, keep: int) -> None:
    """Every rank calls this (DeepSpeed saves each rank's shard)."""
    rank = dist.get_rank()
    state.saved_at = time.time()
    tag = f"{TAG_PREFIX}{state.step:08d}"
    root = checkpoint_dir(run_dir)
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state={"train_state": state.to_dict()},
                               save_latest=False)
        with atomic_path(root / tag / f"rng-rank{rank}.pt") as tmp:
            torch.save(_rng_state(), tmp)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        if not _out_of_space(root, error):
            raise
        raise CrammitError(f"no space left on the device of {root} while saving checkpoint {tag} (the "
                           "previous checkpoint is intact); free space") from None
    dist.barrier()
    if rank == 0:
        write_json(root / tag / FILE_LIST, {str(path.relative_to(root / tag)): path.stat().st_size
                                            for path in sorted((root / tag).rglob("*")) if path.is_file()})
        with atomic_path(root / LATEST) as tmp:
            tmp.write_text(tag)
        _prune(root, keep)
    dist.barrier()


def load_checkpoint(engine, run_dir: Path) -> TrainState | None:
    """Restore the newest complete checkpoint into `engine`; None when there is none.
    Rank 0 chooses (saying which it passes over and why) and every rank loads that one."""
    root = checkpoint_dir(run_dir)
    chosen = torch.tensor([-1], dtype=torch.int64, device=next(engine.module.parameters()).device)
    if dist.get_rank() == 0:
        tag = _newest_complete(root)
        chosen[0] = -1 if tag is None else int(tag.removeprefix(TAG_PREFIX))
    dist.broadcast(chosen, src=0)
    if chosen.item() < 0:
        return None
    tag = f"{TAG_PREFIX}{chosen.item():08d}"
    _, client_state = engine.load_checkpoint(str(root), tag=tag)
    rng_file = root / tag / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**client_state["train_state"])


def problem_with(directory: Path) -> str | None:
    """Why the checkpoint in `directory` cannot be loaded, or None when it can. Without a
    file list it is a save that never finished."""
    if not (directory / FILE_LIST).is_file():
        return "its save never finished"
    for name, size in read_json(directory / FILE_LIST).items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, not the {size:,} saved"
    return None


def _tags_newest_first(root: Path) -> list[str]:
    return sorted((p.name for p in root.glob(f"{TAG_PREFIX}*") if p.is_dir()), reverse=True)


def _newest_complete(root: Path) -> str | None:
    for tag in _tags_newest_first(root) if root.is_dir() else []:
        problem = problem_with(root / tag)
        if problem is None:
            return tag
        print(f"checkpoint {tag} is unusable ({problem}); trying the one before it",
              file=sys.stderr, flush=True)
    return None


def _prune(root: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints; remove older ones and older unfinished saves."""
    complete = [tag for tag in _tags_newest_first(root) if problem_with(root / tag) is None]
    if len(complete) < keep:
        return
    oldest_kept = complete[keep - 1]
    for tag in _tags_newest_first(root):
        if tag < oldest_kept:
            shutil.rmtree(root / tag)


def _out_of_space(root: Path, error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(root).free < LOW_SPACE_BYTES


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
