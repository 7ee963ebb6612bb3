"""Pack tokenized documents into fixed-length training sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from crammit.data.stages import pack
from crammit.data.tokenizer import SpecialIds


def pack_documents(tokenizer: Tokenizer, documents: Sequence[str], seq_len: int) -> np.ndarray:
    """Tokenize `documents` and pack them (see `stages.pack`): int32 (rows, seq_len)."""
    special = SpecialIds.of(tokenizer)
    encodings = tokenizer.encode_batch(list(documents), add_special_tokens=False)
    return pack([encoding.ids for encoding in encodings], seq_len, special.cls, special.sep)
