"""How far a run has got: the position that checkpoints save and resume restores."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    sequences: int = 0  # sequences consumed from the data stream (the data position)
    tokens: int = 0
    flops: float = 0.0
    elapsed_s: float = 0.0  # budget time spent in the training loop, across resumes
    initial_eval_loss: float | None = None
    saved_at: float = 0.0  # wall-clock time (epoch seconds) of the save

    def to_dict(self) -> dict:
        return asdict(self)
