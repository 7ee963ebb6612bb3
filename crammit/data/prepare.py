"""Turn a corpus into what the trainer reads: a tokenizer and packed train/eval sequences.

The interim loader of the foundation: everything fits in memory. Results are cached by
content, so repeated runs on the same corpus skip tokenizer training and packing.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from crammit.data.corpus import load_documents
from crammit.data.packing import pack_documents
from crammit.data.stages import content_hash, is_held_out
from crammit.data.tokenizer import train_tokenizer
from crammit.errors import CrammitError
from crammit.io import atomic_path

PREPARED_FORMAT_VERSION = 2
TRAIN_FILE, EVAL_FILE, TOKENIZER_FILE = "train.npy", "eval.npy", "tokenizer.json"


@dataclass(frozen=True)
class PreparedData:
    """A directory holding `train.npy`, `eval.npy` (int32 rows of token ids) and `tokenizer.json`."""

    path: Path

    def train_sequences(self) -> np.ndarray:
        return np.load(self.path / TRAIN_FILE, mmap_mode="r")

    def eval_sequences(self) -> np.ndarray:
        return np.load(self.path / EVAL_FILE, mmap_mode="r")

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(str(self.path / TOKENIZER_FILE))


def prepare_data(
    corpus: str, vocab_size: int, seq_len: int, out_dir: Path, cache_dir: Path,
    eval_fraction: float = 0.02,
) -> PreparedData:
    """Tokenizer + packed sequences for `corpus` in `out_dir` (built once, then cached)."""
    documents = load_documents(corpus, cache_dir)
    key = hashlib.blake2b(digest_size=10)
    for part in (PREPARED_FORMAT_VERSION, vocab_size, seq_len, eval_fraction):
        key.update(f"{part}\x00".encode())
    for document in documents:
        key.update(document.encode() + b"\x1e")
    cached = cache_dir / f"prepared-{key.hexdigest()}"
    if not cached.is_dir():
        _build(documents, vocab_size, seq_len, eval_fraction, cached)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(cached, out_dir)
    return PreparedData(out_dir)


def _build(documents: list[str], vocab_size: int, seq_len: int, eval_fraction: float, out: Path) -> None:
    train, evaluation = [], []
    for document in documents:
        (evaluation if is_held_out(content_hash(document), eval_fraction) else train).append(document)
    tokenizer = train_tokenizer(train, vocab_size)
    train_rows = pack_documents(tokenizer, train, seq_len)
    eval_rows = pack_documents(tokenizer, evaluation, seq_len)
    if len(train_rows) == 0 or len(eval_rows) == 0:
        raise CrammitError(
            f"corpus too small: {len(train_rows)} training and {len(eval_rows)} held-out "
            f"sequences of {seq_len} tokens; give a larger --corpus"
        )
    with atomic_path(out) as tmp:
        tmp.mkdir()
        np.save(tmp / TRAIN_FILE, train_rows)
        np.save(tmp / EVAL_FILE, eval_rows)
        tokenizer.save(str(tmp / TOKENIZER_FILE))
