"""Corpus preparation on Ray Data: `crammit data prepare`.

    read → normalise/chunk → exact dedup → [near-duplicate removal] → tokenizer (bounded
    sample) → compression filter, tokenize, pack, count tokens → one sort (held-out
    sequences first, then token prevalence or a seeded shuffle) → eval + shards

Each stage streams over Ray Data, so no process holds the corpus. Stages are written under
`DIR/.work/` and renamed into place when complete, shards are written one by one
atomically, and `manifest.json` comes last: an interrupted prepare re-runs only what is
missing. Document order comes from content hashes and sequence order from content keys,
never from timing, so preparing twice with the same tokenizer gives byte-identical shards.
(HF `tokenizers` breaks frequency ties in WordPiece training by hash-map order, so two
trainings can differ in a few rare vocabulary entries: pass `tokenizer=` to reproduce.)
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tokenizers import Tokenizer

from crammit.data.layout import (
    EVAL_FILE,
    LENGTH_BUCKET,
    MANIFEST,
    SHARD_PATTERN,
    TOKEN_COUNTS,
    TOKENIZER,
    read_manifest,
    sequence_rows,
    sequence_table,
)
from crammit.data.sources import REPLACED, TEXT, read_corpus
from crammit.data.stages import (
    chunk,
    content_hash,
    duplicate_members,
    is_held_out,
    lsh_band_keys,
    normalize,
    pack,
    prevalence_scores,
    shuffle_keys,
    tokens_per_char,
)
from crammit.data.tokenizer import SpecialIds, train_tokenizer
from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json

HASH, SPLIT, BUCKET, ORDER_KEY, TIE_KEY = "hash", "split", "bucket", "order_key", "tie_key"
TRAIN, EVAL = "train", "eval"
HASH_DTYPE = "S32"  # a content hash's 32 hex digits as bytes: a quarter of numpy's str size
COUNTS_FILE, SETTINGS_FILE = "counts.json", "settings.json"


class Order(str, Enum):
    PREVALENCE = "prevalence"  # the paper: sequences of common tokens first
    SHUFFLE = "shuffle"


@dataclass(frozen=True)
class PrepareConfig:
    corpus: str = "embedded"
    text_field: str = "text"
    vocab_size: int = 32768
    seq_len: int = 128
    lowercase: bool = True  # the WordPiece tokenizer is uncased
    max_document_chars: int = 100_000  # longer documents (giant lines) are chunked
    max_tokens_per_char: float = 0.3  # the paper's compression filter threshold
    near_duplicate_threshold: float = 0.0  # MinHash Jaccard above which documents are near-duplicates; 0: off
    minhash_permutations: int = 128
    shingle_words: int = 5  # near-duplicates compare word 5-grams
    tokenizer_sample_documents: int = 200_000
    tokenizer: str = ""  # an existing tokenizer.json to use instead of training one
    eval_fraction: float = 0.02
    order: Order = Order.PREVALENCE
    seed: int = 0
    sequences_per_shard: int = 65_536
    documents_per_pack: int = 1024  # documents concatenated per packing batch
    # Blocks of the deduplication shuffles. Each holds 1/partitions of the corpus in one
    # task; raise it for corpora beyond a few GB. Document order (so packing) depends on it.
    partitions: int = 16


@ray.remote(num_cpus=0)
class StageCounts:
    """Counts kept and dropped per stage, and token frequencies, reported by every batch
    wherever it runs."""

    def __init__(self) -> None:
        self.totals: Counter = Counter()
        self.tokens: np.ndarray | None = None

    def add(self, counts: dict, tokens: np.ndarray | None = None) -> None:
        self.totals.update(counts)
        if tokens is not None:
            self.tokens = tokens.astype(np.int64) if self.tokens is None else self.tokens + tokens

    def get(self) -> dict:
        return dict(self.totals)

    def get_tokens(self) -> np.ndarray | None:
        return self.tokens


def prepare_corpus(config: PrepareConfig, out: Path, cache_dir: Path) -> dict:
    """Prepare `config.corpus` into `out`; returns the manifest (at once, if `out` is
    already complete with these settings)."""
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        # The vocabulary is the tokenizer's, which may be smaller than asked: not compared.
        differing = [name for name, value in _settings(config).items()
                     if name != "vocab_size" and manifest["config"].get(name) != value]
        if differing:
            raise CrammitError(f"{out} already holds a corpus prepared with other {', '.join(differing)}; "
                               "choose another --out")
        return manifest
    context = ray.data.DataContext.get_current().copy()
    context.execution_options.preserve_order = True  # packing batches must not depend on timing
    with ray.data.DataContext.current(context):
        return _prepare(config, out, cache_dir)


def _settings(config: PrepareConfig) -> dict:
    return {**asdict(config), "order": config.order.value}


def _prepare(config: PrepareConfig, out: Path, cache_dir: Path) -> dict:
    work = out / ".work"
    # Work an interrupted prepare left behind is reused only under the same settings.
    record = work / SETTINGS_FILE
    if record.exists() and read_json(record) != _settings(config):
        raise CrammitError(f"{out} holds an unfinished prepare with other settings; delete it or "
                           "choose another --out")
    clean_dir = documents_dir = _stage(work / "clean", lambda tmp: _clean(config, cache_dir, tmp))
    if not record.exists():
        write_json(record, _settings(config))
    if config.near_duplicate_threshold > 0:
        documents_dir = _stage(work / "near-unique",
                               lambda tmp: _drop_near_duplicates(clean_dir, config, tmp))
    tokenizer_path = out / TOKENIZER
    if not tokenizer_path.exists():
        with atomic_path(tokenizer_path) as tmp:
            if config.tokenizer:
                shutil.copyfile(config.tokenizer, tmp)
            else:
                _train_tokenizer(documents_dir, config).save(str(tmp))
    # The vocabulary is the tokenizer's: a given one, or a trained one smaller than asked.
    config = replace(config, vocab_size=Tokenizer.from_file(str(tokenizer_path)).get_vocab_size())
    sequences_dir = _stage(work / "sequences", lambda tmp: _tokenize_and_pack(documents_dir, tokenizer_path,
                                                                              config, tmp))
    counts = {name: value for stage in dict.fromkeys([clean_dir, documents_dir, sequences_dir])
              for name, value in read_json(stage / COUNTS_FILE).items()}
    if not (out / TOKEN_COUNTS).exists():
        with atomic_path(out / TOKEN_COUNTS) as tmp:
            shutil.copyfile(sequences_dir / TOKEN_COUNTS, tmp)
    shards = _write_outputs(sequences_dir, counts[f"sequences_{EVAL}"], config, out)
    manifest = {
        "source": config.corpus,
        "config": _settings(config),
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        "counts": counts,
        "shards": shards,
        "train_sequences": sum(pq.read_metadata(out / name).num_rows for name in shards),
        "eval_sequences": pq.read_metadata(out / EVAL_FILE).num_rows,
    }
    manifest["train_tokens"] = manifest["train_sequences"] * config.seq_len
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(work)
    return manifest


def _stage(path: Path, build) -> Path:
    """Run `build(tmp_dir)` unless `path` is already complete; completion is the rename."""
    if not path.is_dir():
        with atomic_path(path) as tmp:
            build(tmp)
    return path


def _clean(config: PrepareConfig, cache_dir: Path, out: Path) -> None:
    """Normalise and chunk documents, drop empty ones and exact duplicates. Equal hashes
    meet in one block of the keyed shuffle, sorted by hash: the document order."""
    counts = StageCounts.remote()
    documents = read_corpus(config.corpus, cache_dir, config.text_field).map_batches(
        _clean_batch, fn_kwargs={"config": config, "counts": counts}, batch_format="numpy")
    unique = documents.repartition(config.partitions, keys=[HASH], sort=True).map_batches(
        _drop_duplicates, fn_kwargs={"counts": counts}, batch_size=None, batch_format="numpy")
    unique.write_parquet(str(out))
    totals = ray.get(counts.get.remote())
    if totals.get("documents_kept", 0) - totals.get("dropped_duplicates", 0) <= 0:
        raise CrammitError(f"corpus {config.corpus!r} has no non-empty documents; pass another --corpus")
    write_json(out / COUNTS_FILE, totals)


def _clean_batch(batch: dict, config: PrepareConfig, counts) -> dict:
    texts, empty, chunks_added = [], 0, 0
    for text in batch[TEXT]:
        pieces = chunk(normalize(str(text), config.lowercase), config.max_document_chars)
        empty += not pieces
        chunks_added += max(len(pieces) - 1, 0)
        texts += pieces
    counts.add.remote({"documents_read": len(batch[TEXT]), "dropped_empty": empty,
                       "chunks_added": chunks_added, "documents_kept": len(texts),
                       "replaced_characters": int(np.sum(batch[REPLACED]))})
    hashes = [content_hash(text) for text in texts]
    return {TEXT: np.array(texts, dtype=object), HASH: np.array(hashes, dtype=object)}


def _drop_duplicates(block: dict, counts) -> dict:
    """The block is one hash partition, sorted by hash: keep the first of each hash."""
    _, first = np.unique(block[HASH], return_index=True)
    keep = np.sort(first)
    counts.add.remote({"dropped_duplicates": len(block[HASH]) - len(keep)})
    return {column: values[keep] for column, values in block.items()}


def _drop_near_duplicates(documents_dir: Path, config: PrepareConfig, out: Path) -> None:
    """MinHash LSH: documents sharing a bucket with a smaller hash are dropped. Buckets
    meet in the blocks of a keyed shuffle; the dropped hashes (32 bytes each, not the
    documents) are gathered and every filter task reads them from the object store."""
    documents = ray.data.read_parquet(str(documents_dir))
    buckets = documents.map_batches(_bucket_rows, fn_kwargs={"config": config}, batch_format="numpy",
                                    batch_size=256)
    members = buckets.repartition(config.partitions, keys=[BUCKET]).map_batches(
        _bucket_duplicates, batch_size=None, batch_format="numpy")
    found = [batch[HASH] for batch in members.iter_batches(batch_format="numpy")]
    dropped = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=HASH_DTYPE)
    counts = StageCounts.remote()
    documents.map_batches(_keep_unlisted, fn_kwargs={"dropped": ray.put(dropped), "counts": counts},
                          batch_format="numpy").write_parquet(str(out))
    write_json(out / COUNTS_FILE, ray.get(counts.get.remote()))


def _bucket_rows(batch: dict, config: PrepareConfig) -> dict:
    keys = lsh_band_keys([str(text) for text in batch[TEXT]], config.near_duplicate_threshold,
                         config.minhash_permutations, config.shingle_words, config.seed)
    return {BUCKET: np.array([key for document in keys for key in document], dtype=object),
            HASH: np.repeat(batch[HASH], [len(document) for document in keys])}


def _bucket_duplicates(block: dict) -> dict:
    members = duplicate_members(block[BUCKET].astype("S"), block[HASH].astype(HASH_DTYPE))
    return {HASH: members}


def _keep_unlisted(batch: dict, dropped, counts) -> dict:
    keep = ~np.isin(batch[HASH].astype(HASH_DTYPE), ray.get(dropped))
    counts.add.remote({"dropped_near_duplicates": int((~keep).sum())})
    return {column: values[keep] for column, values in batch.items()}


def _train_tokenizer(documents_dir: Path, config: PrepareConfig) -> Tokenizer:
    """WordPiece on a bounded sample: the first documents in the stage's hash order (a
    pseudo-random, reproducible sample), held-out documents excluded."""
    def sample() -> Iterator[str]:
        documents = ray.data.read_parquet(str(documents_dir)).limit(config.tokenizer_sample_documents)
        for batch in documents.iter_batches(batch_size=1024, batch_format="numpy"):
            yield from (text for text, digest in zip(batch[TEXT], batch[HASH], strict=True)
                        if not is_held_out(digest, config.eval_fraction))

    return train_tokenizer(sample(), config.vocab_size)


@lru_cache(maxsize=4)
def _load_tokenizer(path: str) -> tuple[Tokenizer, SpecialIds]:
    """Loaded once per worker process, not once per batch."""
    tokenizer = Tokenizer.from_file(path)
    return tokenizer, SpecialIds.of(tokenizer)


def _tokenize_and_pack_batch(batch: dict, tokenizer_path: str, config: PrepareConfig, counts) -> pa.Table:
    """The compression filter, tokenization and packing of one batch of documents, and
    the token frequencies of its training sequences (for the prevalence order). Tasks,
    not an actor pool: on a small machine actors would hold every CPU the reader needs."""
    tokenizer, special = _load_tokenizer(tokenizer_path)
    texts = [str(text) for text in batch[TEXT]]
    token_ids = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    splits: dict[str, list] = {TRAIN: [], EVAL: []}
    dropped = 0
    for text, digest, ids in zip(texts, batch[HASH], token_ids, strict=True):
        if tokens_per_char(len(ids), text) > config.max_tokens_per_char:
            dropped += 1
            continue
        splits[EVAL if is_held_out(digest, config.eval_fraction) else TRAIN].append(ids)
    rows = {split: pack(token_lists, config.seq_len, special.cls, special.sep)
            for split, token_lists in splits.items()}
    kept_tokens = sum(len(ids) + 1 for ids in splits[TRAIN] + splits[EVAL])
    lengths = Counter(f"{LENGTH_BUCKET}{int(np.log2(max(len(ids), 1)))}" for ids in token_ids)
    packed_tokens = sum(len(split_rows) for split_rows in rows.values()) * (config.seq_len - 1)
    counts.add.remote({**lengths, "dropped_compression": dropped,
                       "documents_tokenized": len(texts) - dropped, "tokens_tokenized": kept_tokens,
                       "tokens_dropped_packing": kept_tokens - packed_tokens,
                       **{f"sequences_{split}": len(split_rows) for split, split_rows in rows.items()}},
                      np.bincount(rows[TRAIN].ravel(), minlength=config.vocab_size))
    tables = (sequence_table(split_rows).append_column(SPLIT, pa.repeat(pa.scalar(split), len(split_rows)))
              for split, split_rows in rows.items())
    return pa.concat_tables(tables)


def _tokenize_and_pack(documents_dir: Path, tokenizer_path: Path, config: PrepareConfig, out: Path) -> None:
    counts = StageCounts.remote()
    documents = ray.data.read_parquet(str(documents_dir))
    sequences = documents.map_batches(
        _tokenize_and_pack_batch, fn_kwargs={"tokenizer_path": str(tokenizer_path), "config": config,
                                             "counts": counts},
        batch_size=config.documents_per_pack, batch_format="numpy",
    )
    sequences.write_parquet(str(out))
    write_json(out / COUNTS_FILE, ray.get(counts.get.remote()))
    np.save(out / TOKEN_COUNTS, ray.get(counts.get_tokens.remote()))


def _ordered(sequences: ray.data.Dataset, config: PrepareConfig,
             token_counts: np.ndarray) -> ray.data.Dataset:
    """One sort for everything: held-out sequences first (in a seeded shuffle order), then
    training sequences by token prevalence (ties by the seeded key) or by the key alone."""
    log_counts = np.log1p(token_counts)

    def add_keys(table: pa.Table) -> pa.Table:
        rows = sequence_rows(table)
        order = (-prevalence_scores(rows, log_counts) if config.order == Order.PREVALENCE
                 else np.zeros(len(rows)))
        order[np.asarray(pc.equal(table[SPLIT], EVAL))] = -np.inf
        return table.drop_columns([SPLIT]).append_column(ORDER_KEY, pa.array(order)).append_column(
            TIE_KEY, pa.array(shuffle_keys(rows, config.seed)))

    keyed = sequences.map_batches(add_keys, batch_format="pyarrow")
    return keyed.sort([ORDER_KEY, TIE_KEY]).drop_columns([ORDER_KEY, TIE_KEY])


def _write_outputs(sequences_dir: Path, eval_sequences: int, config: PrepareConfig, out: Path) -> list[str]:
    """`eval.parquet`, then shards of `sequences_per_shard` in order; files already there
    are kept (resume)."""
    ordered = _ordered(ray.data.read_parquet(str(sequences_dir)), config,
                       np.load(out / TOKEN_COUNTS))
    sizes = itertools.chain([eval_sequences], itertools.repeat(config.sequences_per_shard))
    pieces = _slices(ordered.iter_batches(batch_size=None, batch_format="pyarrow"), sizes)
    held_out = next(pieces, None)
    if not (out / EVAL_FILE).exists():
        _write_table(out / EVAL_FILE, held_out if held_out is not None else sequence_table(
            np.zeros((0, config.seq_len), np.int32)))
    names = []
    for index, table in enumerate(pieces):
        name = SHARD_PATTERN.format(index)
        if not (out / name).exists():
            _write_table(out / name, table)
        names.append(name)
    if not names:
        raise CrammitError("no training sequences survived preparation; give a larger --corpus or "
                           "raise --max-tokens-per-char")
    return names


def _slices(tables: Iterator[pa.Table], sizes: Iterator[int]) -> Iterator[pa.Table]:
    """Consecutive tables of `next(sizes)` rows from a stream of tables; the last may be
    shorter, and a size of 0 yields an empty table."""
    pending, held, size = [], 0, next(sizes)
    for table in tables:
        pending.append(table)
        held += table.num_rows
        while held >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size)
            pending, held, size = [whole.slice(size)], held - size, next(sizes)
    if held:
        yield pa.concat_tables(pending)


def _write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
