"""The run directory's files: resolved config, metrics tables, final model and results.
torch is imported only to save and load the weights, so a study's tables read run
directories without it."""

from __future__ import annotations

import time
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from crammit.config import ModelConfig, TrainConfig
from crammit.data.layout import TOKENIZER
from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.parquet"
EVALS_FILE = "evals.parquet"
ATTEMPTS_FILE = "attempts.json"
FINAL_FILE = "final.json"
MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
DATA_DIR = "data"


@dataclass(frozen=True)
class StepMetrics:
    """One row of metrics.parquet: one optimizer step."""

    step: int
    tokens: int
    flops: float
    elapsed_s: float
    loss: float
    lr: float
    batch_size: int
    tokens_per_s: float
    mfu: float | None
    attempt: int  # which start of the training loop ran this step (attempts.json)


@dataclass(frozen=True)
class EvalMetrics:
    """One row of evals.parquet: a held-out evaluation after `step` optimizer steps."""

    step: int
    tokens: int
    flops: float
    elapsed_s: float
    eval_loss: float


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def save_config(run_dir: Path, config: TrainConfig) -> None:
    write_json(run_dir / CONFIG_FILE, config.to_dict())


def load_config(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE))
    except (TypeError, KeyError) as error:  # a field this version does not have, or lacks
        raise CrammitError(f"{run_dir / CONFIG_FILE} does not match this crammit version's settings "
                           f"({error}); continue it with the version that started it") from None


class StepTable:
    """Rows of one dataclass (`StepMetrics`, `EvalMetrics`) keyed by step, kept in memory
    and rewritten atomically every `flush_every_s` seconds and on `flush()`, so the table on
    disk is never more than that behind (a day is ~10k rows)."""

    def __init__(self, path: Path, row_type: type, up_to_step: int, flush_every_s: float = 30.0) -> None:
        self.path = path
        self.columns = list(row_type.__dataclass_fields__)
        self.flush_every_s = flush_every_s
        self.last_flush = time.monotonic()
        # Steps after the checkpoint we resume from are redone, so their rows go.
        self.rows = (
            pd.read_parquet(self.path).query("step <= @up_to_step").to_dict("records")
            if self.path.exists() else []
        )

    def append(self, row) -> None:
        self.rows.append(asdict(row))
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows, columns=self.columns).to_parquet(tmp, index=False)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / METRICS_FILE)


def read_evals(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / EVALS_FILE)


HF_DIR = "hf"  # the final model and tokenizer in Hugging Face's own layout


def save_final_model(run_dir: Path, model: nn.Module, config: TrainConfig) -> None:
    """HF-style layout: weights, shape and tokenizer side by side, ready to fine-tune; and
    all of it as `hf/`, which `transformers` loads by itself (`export_hf`)."""
    from safetensors.torch import save_file

    # Cloned: ZeRO keeps parameters as views into flat buffers, which safetensors refuses.
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        save_file(weights, str(tmp))
    write_json(run_dir / MODEL_CONFIG_FILE, config.to_dict()["model"])
    export_hf(run_dir, run_dir / HF_DIR)


def export_hf(run_dir: Path, out: Path) -> None:
    """The run's final model and tokenizer in Hugging Face's layout, written whole or not at
    all: `BertForMaskedLM` for the bert arch; for the crammed arch, crammit's model with its
    code, which the Auto classes load with `trust_remote_code=True`."""
    config = final_model_config(run_dir)
    if out.exists() and not is_hf_dir(out):  # replacing it would delete what the user keeps there
        raise CrammitError(f"{out} exists and is not a Hugging Face model directory; pass a new "
                           "directory as --out")
    from crammit.data.tokenizer import save_hf_tokenizer  # these import transformers, slow to import
    from crammit.model.hf_export import save_model

    with atomic_path(out) as tmp:
        save_model(config, load_final_weights(run_dir), tmp)
        save_hf_tokenizer(run_dir / TOKENIZER, tmp, config.seq_len)


def is_hf_dir(path: Path) -> bool:
    """A directory `save_pretrained` wrote: its config.json names the model's classes."""
    config = path / CONFIG_FILE
    return config.is_file() and "architectures" in read_json(config)


def final_model_config(run_dir: Path) -> ModelConfig:
    """The shape of a run's final model; a CrammitError when the run has none yet."""
    missing = [name for name in (MODEL_FILE, MODEL_CONFIG_FILE, TOKENIZER) if not (run_dir / name).is_file()]
    if missing:
        raise CrammitError(f"{run_dir} holds no final model (no {', '.join(missing)}); pass the directory "
                           "of a finished `crammit train` run, or finish this one with --resume")
    return ModelConfig(**read_json(run_dir / MODEL_CONFIG_FILE))


def load_final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / MODEL_FILE))


def record_attempt(run_dir: Path, attempt: dict) -> int:
    """Append one start of the training loop (a first start, a `--resume`, or a restart
    after a worker failure) to attempts.json; returns its number, from 1."""
    path = run_dir / ATTEMPTS_FILE
    attempts = read_json(path) if path.exists() else []
    attempts.append(attempt)
    write_json(path, attempts)
    return len(attempts)


def read_attempts(run_dir: Path) -> list[dict]:
    return read_json(run_dir / ATTEMPTS_FILE)


@dataclass(frozen=True)
class FinalResults:
    """final.json: what a finished run measured and spent, written once at its end."""

    initial_eval_loss: float  # held-out MLM loss before the first step
    eval_loss: float  # held-out MLM loss of the final model
    steps: int  # optimizer steps
    tokens: int
    flops: float
    elapsed_s: float  # training time across resumes, evaluation excluded (the budget's clock)
    budget: str  # as `Budget.describe` states it, e.g. "24 hours"
    eval_sequences: int  # held-out sequences both losses are measured on
    eval_mask_rate: float
    resumed_at_step: int  # where the loop's last start began (0: from scratch)
    worker_nodes: tuple[str, ...]  # each rank's Ray node, in rank order ("local" outside a cluster)

    def to_dict(self) -> dict:
        return {**asdict(self), "worker_nodes": list(self.worker_nodes)}


def save_final(run_dir: Path, results: FinalResults) -> None:
    write_json(run_dir / FINAL_FILE, results.to_dict())


def read_final(run_dir: Path) -> FinalResults:
    """final.json, checked field by field; a CrammitError names what does not fit."""
    path = run_dir / FINAL_FILE
    data = read_json(path)
    hints = typing.get_type_hints(FinalResults)
    names = [field.name for field in fields(FinalResults)]
    problems = [] if isinstance(data, dict) else ["not a JSON object"]
    if not problems:
        problems += [f"no {name}" for name in names if name not in data]
        problems += [f"unknown field {name}" for name in data if name not in hints]
        problems += [f"{name} is {data[name]!r}, not {_type_name(hints[name])}"
                     for name in names if name in data and not _fits(data[name], hints[name])]
    if problems:
        raise CrammitError(f"{path} is not a final.json this crammit version reads ({'; '.join(problems)})")
    return FinalResults(**{name: _typed(data[name], hints[name]) for name in names})


def _fits(value: object, hint: type) -> bool:
    if isinstance(value, bool):  # JSON's true/false is no number
        return False
    if hint is float:
        return isinstance(value, int | float)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, hint)


def _typed(value: object, hint: type) -> object:
    if hint is float:
        return float(value)
    return tuple(value) if typing.get_origin(hint) is tuple else value


def _type_name(hint: type) -> str:
    return "a list of strings" if typing.get_origin(hint) is tuple else f"a JSON {hint.__name__}"
