"""Pack tokenized documents into fixed-length training sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from crammit.data.tokenizer import SpecialIds


def pack_documents(tokenizer: Tokenizer, documents: Sequence[str], seq_len: int) -> np.ndarray:
    """Concatenate documents, each ended by [SEP], and cut the stream into rows
    `[CLS] <seq_len - 1 tokens>`; the ragged tail is dropped. Returns int32 (rows, seq_len)."""
    special = SpecialIds.of(tokenizer)
    encodings = tokenizer.encode_batch(list(documents), add_special_tokens=False)
    stream = np.fromiter(
        (token for encoding in encodings for token in (*encoding.ids, special.sep)),
        dtype=np.int32,
    )
    body = seq_len - 1
    rows = len(stream) // body
    packed = np.empty((rows, seq_len), dtype=np.int32)
    packed[:, 0] = special.cls
    packed[:, 1:] = stream[: rows * body].reshape(rows, body)
    return packed
