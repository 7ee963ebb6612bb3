"""Checkpoint saves that fail: a full disk is one clear error, and nothing complete is lost."""

import errno
from pathlib import Path

import pytest

from crammit.config import Device
from crammit.errors import CrammitError
from crammit.train.checkpoint import checkpoint_dir, problem_with, save_checkpoint
from crammit.train.engine import process_group
from crammit.train.state import TrainState


class FullDisk:
    """An engine whose save runs out of space half-way, as DeepSpeed's would."""

    def save_checkpoint(self, root, tag, **_):
        directory = Path(root) / tag
        directory.mkdir(parents=True)
        (directory / "mp_rank_00_model_states.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_clear_error_and_the_unfinished_save_is_never_resumed(tmp_path):
    with process_group(Device.CPU), pytest.raises(CrammitError, match="no space left .* step-00000007"):
        save_checkpoint(FullDisk(), tmp_path, TrainState(step=7), keep=2)
    assert problem_with(checkpoint_dir(tmp_path) / "step-00000007") == "its save never finished"
