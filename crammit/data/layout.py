"""The prepared-directory format that `crammit data prepare` writes and training reads.

    DIR/shard-00000.parquet ...   training sequences: an `input_ids` column of fixed-length int32 lists
    DIR/eval.parquet              held-out sequences, same schema
    DIR/tokenizer.json            the HF `tokenizers` tokenizer they were made with
    DIR/token_counts.npy          how often each token id occurs in the training shards
    DIR/manifest.json             source, config, counts per stage; written last

Ray-free, so readers (the training loop, `inspect`, a study's plan) need not import the pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa

from crammit.config import ModelConfig, model_config
from crammit.errors import CrammitError
from crammit.io import read_json

INPUT_IDS = "input_ids"
MANIFEST, TOKENIZER, EVAL_FILE = "manifest.json", "tokenizer.json", "eval.parquet"
TOKEN_COUNTS = "token_counts.npy"
SHARD_PATTERN = "shard-{:05d}.parquet"
LENGTH_BUCKET = "document_tokens_log2_"  # counts key prefix: documents with 2^k..2^(k+1)-1 tokens


def read_manifest(directory: Path) -> dict:
    """The manifest of a prepared directory, or a CrammitError saying it is not one."""
    if not (directory / MANIFEST).is_file():
        raise CrammitError(f"{directory} is not a prepared corpus (no {MANIFEST}); "
                           "run `crammit data prepare --out DIR` first")
    return read_json(directory / MANIFEST)


def model_for(size: str, data: Path | None, arch: str = "crammed") -> ModelConfig:
    """The named size in the arch's design, with the vocabulary and sequence length of a
    prepared directory."""
    model = model_config(size, arch)
    if data is None:
        return model
    prepared = read_manifest(data)["config"]
    return dataclasses.replace(model, vocab_size=prepared["vocab_size"], seq_len=prepared["seq_len"])


def shard_paths(directory: Path, manifest: dict | None = None) -> list[Path]:
    """The shards of a prepared directory, from its manifest (read unless given)."""
    return [directory / name for name in (manifest or read_manifest(directory))["shards"]]


def sequence_table(rows: np.ndarray) -> pa.Table:
    """Packed rows (n, seq_len) as a table with a fixed-length int32 list column."""
    seq_len = rows.shape[1] if rows.ndim == 2 else 0
    return pa.table({INPUT_IDS: pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.int32()),
                                                                  seq_len)})


def sequence_rows(table: pa.Table) -> np.ndarray:
    """The inverse of `sequence_table`: int32 (n, seq_len)."""
    ids = table[INPUT_IDS].combine_chunks()
    return np.asarray(ids.flatten()).reshape(len(ids), -1)
