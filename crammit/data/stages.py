"""The corpus-preparation operators, one small pure function each, on lists and arrays.

`pipeline.py` runs them over Ray Data batches; here they know nothing of Ray, so each is
tested on its own.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_WHITESPACE = re.compile(r"\s+")


def normalize(text: str, lowercase: bool) -> str:
    """Unicode NFKC, whitespace collapsed to single spaces, optionally lower-cased (an
    uncased tokenizer would lower-case anyway; doing it first makes dedup see it)."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return text.lower() if lowercase else text


def chunk(text: str, max_chars: int) -> list[str]:
    """Split a document longer than `max_chars` at the last space before each limit, so
    one giant line cannot become one giant row."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    return [*pieces, text] if text else pieces


def content_hash(text: str) -> str:
    """Exact-duplicate key (and a stable document id)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def shingles(text: str, width: int) -> list[bytes]:
    """Word `width`-grams: what near-duplicate detection compares (a document shorter than
    `width` words is one shingle)."""
    words = text.split()
    return [" ".join(words[i: i + width]).encode() for i in range(max(len(words) - width + 1, 1))]


def lsh_band_keys(texts: Sequence[str], threshold: float, num_perm: int, shingle_width: int,
                  seed: int) -> list[list[bytes]]:
    """Each document's locality-sensitive buckets: MinHash signatures cut into bands as
    datasketch's `MinHashLSH` cuts them for `threshold` (documents whose shingle Jaccard
    similarity is above it share a bucket with high probability). A key names band and
    values, so keys from different bands never collide."""
    # Imported here: datasketch pulls in scipy, ~60 MB in every worker that imports stages.
    from datasketch import MinHash, MinHashLSH

    bands = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges
    signatures = MinHash.bulk([shingles(text, shingle_width) for text in texts], num_perm=num_perm,
                              seed=seed)
    return [[hashlib.blake2b(signature.hashvalues[start:end].tobytes(), digest_size=16,
                             person=band.to_bytes(8, "little")).digest()
             for band, (start, end) in enumerate(bands)]
            for signature in signatures]


def duplicate_members(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids that share a key with a smaller id: everything but the first (smallest id)
    of each bucket. The smallest id of a group of near-duplicates is never dropped, so each
    group keeps at least one document."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    first_of_bucket = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return np.unique(ids[~first_of_bucket])


def is_held_out(digest: str, eval_fraction: float) -> bool:
    """A content-keyed split: the same document is held out on every machine and run."""
    return int(digest[:12], 16) % 1_000_000 < eval_fraction * 1_000_000


def tokens_per_char(num_tokens: int, text: str) -> float:
    """The paper's compression filter statistic: high for text the tokenizer handles
    badly (code, tables, other scripts)."""
    return num_tokens / max(len(text), 1)


def pack(token_lists: Sequence[Sequence[int]], seq_len: int, cls_id: int, sep_id: int) -> np.ndarray:
    """Concatenate documents, each closed by [SEP], into rows `[CLS] <seq_len-1 tokens>`;
    the ragged tail is dropped. Returns int32 (rows, seq_len)."""
    lengths = [len(tokens) + 1 for tokens in token_lists]
    stream = np.empty(sum(lengths), dtype=np.int32)
    position = 0
    for tokens, length in zip(token_lists, lengths, strict=True):
        stream[position: position + length - 1] = tokens
        stream[position + length - 1] = sep_id
        position += length
    body = seq_len - 1
    rows = len(stream) // body
    packed = np.empty((rows, seq_len), dtype=np.int32)
    packed[:, 0] = cls_id
    packed[:, 1:] = stream[: rows * body].reshape(rows, body)
    return packed


def prevalence_scores(sequences: np.ndarray, log_counts: np.ndarray) -> np.ndarray:
    """Mean log corpus-frequency of each sequence's tokens: sorting by it, descending, puts
    sequences of common tokens first (the paper's ordering)."""
    return log_counts[sequences].mean(axis=1)


def shuffle_keys(sequences: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random key per sequence, from its content: sorting by it is a
    shuffle that gives the same order on every run, whatever the block layout."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, salt=salt).digest(), "little")
         >> 1 for row in sequences],
        dtype=np.int64,
    )
