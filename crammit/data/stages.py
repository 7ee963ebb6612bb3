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

# The marks of Latin, Greek and Cyrillic accents, one range: a class of every nonspacing
# mark (1,950 code points in 336 ranges) makes `re` many times slower per character, and
# the tokenizer drops the other nonspacing marks itself (see `normalize`).
_COMBINING_DIACRITICS = re.compile("[\u0300-\u036f]")
# The held-out split compares a document's hash modulo this with eval_fraction times it:
# an eval fraction is honoured to a millionth, and the residues of 64-bit hashes are as
# good as uniform over so few values.
HELD_OUT_RESOLUTION = 1_000_000
# Sequences scored at a time by `prevalence_scores`: their gathered float64 frequencies,
# twice the size of the int32 ids, stay 4 MiB at 128 tokens a sequence instead of twice
# the size of the whole part being sorted.
PREVALENCE_CHUNK_ROWS = 4096


def normalize(text: str, lowercase: bool) -> str:
    """Unicode NFKC, whitespace collapsed to single spaces, and for an uncased tokenizer
    lower-cased with accents stripped (NFD, then the combining diacritical marks dropped),
    as BERT's uncased normaliser would: done here, dedup sees it, and the tokenizer can
    skip its own normaliser on the text (`TokenIds`; it still drops other nonspacing marks
    itself, from the texts that hold them)."""
    text = " ".join(unicodedata.normalize("NFKC", text).split())  # every Unicode space, as regex \s
    if not lowercase:
        return text
    text = text.lower()
    return text if text.isascii() else _COMBINING_DIACRITICS.sub("", unicodedata.normalize("NFD", text))


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


def content_hash(text: str) -> int:
    """Exact-duplicate key and stable document id: 64 bits of BLAKE2b. Two different
    documents share one with probability ~n²/2^65 (1 in 3,700 for 100 M documents)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


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
    # Imported here: datasketch pulls in scipy, whose memory every worker that imports
    # stages would otherwise carry, though only near-duplicate detection needs it.
    from datasketch import MinHash, MinHashLSH

    bands = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges
    signatures = MinHash.bulk([shingles(text, shingle_width) for text in texts], num_perm=num_perm,
                              seed=seed)
    return [[hashlib.blake2b(signature.hashvalues[start:end].tobytes(), digest_size=16,
                             person=band.to_bytes(8, "little")).digest()
             for band, (start, end) in enumerate(bands)]
            for signature in signatures]


def later_copies(hashes: np.ndarray, positions: np.ndarray, repeated: np.ndarray,
                 first_positions: np.ndarray) -> np.ndarray:
    """Exact deduplication: which documents (by content hash, at these positions in the
    corpus) repeat one at an earlier position. `repeated` holds the sorted hashes that occur
    more than once, `first_positions` where each first occurs."""
    if not len(repeated):
        return np.zeros(len(hashes), bool)
    index = np.minimum(np.searchsorted(repeated, hashes), len(repeated) - 1)
    return (repeated[index] == hashes) & (first_positions[index] != positions)


def duplicate_members(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids that share a key with a smaller id: everything but the smallest id of each
    bucket (an id may occur more than once). The smallest id of a group of near-duplicates
    is never dropped, so each group keeps at least one document."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    starts = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    smallest = ids[starts][np.cumsum(starts) - 1]  # each row's bucket's smallest id
    return np.unique(ids[ids != smallest])


def is_held_out(hashes: np.ndarray, eval_fraction: float) -> np.ndarray:
    """A content-keyed split of documents by their `content_hash`: the same document is
    held out on every machine and run."""
    residues = np.asarray(hashes, dtype=np.uint64) % HELD_OUT_RESOLUTION
    return residues < round(eval_fraction * HELD_OUT_RESOLUTION)


def tokens_per_char(num_tokens: np.ndarray, num_chars: np.ndarray) -> np.ndarray:
    """The paper's compression filter statistic, per document: high for text the
    tokenizer handles badly (code, tables, other scripts)."""
    return np.asarray(num_tokens) / np.maximum(num_chars, 1)


def pack(tokens: np.ndarray, offsets: np.ndarray, seq_len: int, cls_id: int, sep_id: int) -> np.ndarray:
    """Concatenate documents, each closed by [SEP], into rows `[CLS] <seq_len-1 tokens>`;
    the ragged tail is dropped. Document i is `tokens[offsets[i]:offsets[i+1]]` (the
    layout of an Arrow list array). Returns int32 (rows, seq_len)."""
    stream = np.insert(np.asarray(tokens, dtype=np.int32), np.asarray(offsets[1:], dtype=np.int64), sep_id)
    body = seq_len - 1
    rows = len(stream) // body
    packed = np.empty((rows, seq_len), dtype=np.int32)
    packed[:, 0] = cls_id
    packed[:, 1:] = stream[: rows * body].reshape(rows, body)
    return packed


def prevalence_scores(sequences: np.ndarray, log_counts: np.ndarray,
                      chunk_rows: int = PREVALENCE_CHUNK_ROWS) -> np.ndarray:
    """Mean log corpus-frequency of each sequence's tokens: sorting by it, descending, puts
    sequences of common tokens first (the paper's ordering). In chunks: the gathered
    frequencies are 8 bytes a token."""
    return np.concatenate([np.zeros(0), *(log_counts[sequences[start: start + chunk_rows]].mean(axis=1)
                                          for start in range(0, len(sequences), chunk_rows))])


def shuffle_keys(sequences: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random key per sequence, from its content: sorting by it is a
    shuffle that gives the same order on every run, whatever the block layout."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, salt=salt).digest(), "little")
         >> 1 for row in sequences],
        dtype=np.int64,
    )
