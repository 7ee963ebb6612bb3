"""Corpus preparation on Ray Data: `crammit data prepare`.

    read → normalise/chunk → exact dedup → tokenizer (bounded sample) →
    compression filter, tokenize, pack → order (token prevalence or seeded shuffle) → shards

Each stage streams over Ray Data, so no process holds the corpus. The two stages that
end in a global shuffle are written under `DIR/.work/` and renamed into place when
complete, shards are written one by one atomically, and `manifest.json` comes last: an
interrupted prepare re-runs only what is missing. Orders come from content hashes, never
from block layout, so preparing twice with the same tokenizer gives byte-identical shards.
(HF `tokenizers` breaks frequency ties in WordPiece training by hash-map order, so two
trainings can differ in a few rare vocabulary entries: pass `tokenizer=` to reproduce.)
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tokenizers import Tokenizer

from crammit.data.sources import REPLACED, TEXT, read_corpus
from crammit.data.stages import (
    chunk,
    content_hash,
    is_held_out,
    normalize,
    pack,
    prevalence_scores,
    shuffle_keys,
    tokens_per_char,
)
from crammit.data.tokenizer import SpecialIds, train_tokenizer
from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json

HASH, SPLIT, INPUT_IDS, ORDER_KEY, TIE_KEY = "hash", "split", "input_ids", "order_key", "tie_key"
TRAIN, EVAL = "train", "eval"
MANIFEST, TOKENIZER = "manifest.json", "tokenizer.json"
SHARD_PATTERN = "shard-{:05d}.parquet"
EVAL_FILE = "eval.parquet"
COUNTS_FILE = "counts.json"
LENGTH_BUCKET = "document_tokens_log2_"  # counts key prefix: documents with 2^k..2^(k+1)-1 tokens


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
    tokenizer_sample_documents: int = 200_000
    tokenizer: str = ""  # an existing tokenizer.json to use instead of training one
    eval_fraction: float = 0.02
    order: Order = Order.PREVALENCE
    seed: int = 0
    sequences_per_shard: int = 65_536
    documents_per_pack: int = 1024  # documents concatenated per packing batch


@ray.remote(num_cpus=0)
class StageCounts:
    """Counts kept and dropped per stage, reported by every batch wherever it runs."""

    def __init__(self) -> None:
        self.totals: Counter = Counter()

    def add(self, counts: dict) -> None:
        self.totals.update(counts)

    def get(self) -> dict:
        return dict(self.totals)


def prepare_corpus(config: PrepareConfig, out: Path, cache_dir: Path) -> dict:
    """Prepare `config.corpus` into `out`; returns the manifest (at once, if `out` is
    already complete with these settings)."""
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest["source"] != config.corpus:
            raise CrammitError(f"{out} already holds a corpus prepared from {manifest['source']!r}; "
                               "choose another --out")
        return manifest
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # packing batches must not depend on timing
    work = out / ".work"
    clean_dir = _stage(work / "clean", lambda tmp: _clean(config, cache_dir, tmp))
    tokenizer_path = out / TOKENIZER
    if not tokenizer_path.exists():
        with atomic_path(tokenizer_path) as tmp:
            if config.tokenizer:
                shutil.copyfile(config.tokenizer, tmp)
            else:
                _train_tokenizer(clean_dir, config).save(str(tmp))
    # The vocabulary is the tokenizer's: a given one, or a trained one smaller than asked.
    config = replace(config, vocab_size=Tokenizer.from_file(str(tokenizer_path)).get_vocab_size())
    sequences_dir = _stage(work / "sequences", lambda tmp: _tokenize_and_pack(clean_dir, tokenizer_path,
                                                                              config, tmp))
    sequences = ray.data.read_parquet(str(sequences_dir))
    shards = _write_shards(_ordered(_split(sequences, TRAIN), config), out, config.sequences_per_shard)
    if not (out / EVAL_FILE).exists():
        eval_rows = _ordered(_split(sequences, EVAL), replace(config, order=Order.SHUFFLE))
        _write_table(out / EVAL_FILE, _concat(eval_rows.iter_batches(batch_format="pyarrow")))
    manifest = {
        "source": config.corpus,
        "config": {**asdict(config), "order": config.order.value},
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        "counts": {**read_json(clean_dir / COUNTS_FILE), **read_json(sequences_dir / COUNTS_FILE)},
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
    """Normalise and chunk documents, drop empty ones and exact duplicates, order by hash."""
    counts = StageCounts.remote()
    documents = read_corpus(config.corpus, cache_dir, config.text_field).map_batches(
        _clean_batch, fn_kwargs={"config": config, "counts": counts}, batch_format="numpy")
    partitions = max(2, int(ray.cluster_resources().get("CPU", 1)) * 2)
    unique = documents.repartition(partitions, keys=[HASH]).map_batches(
        _drop_duplicates, fn_kwargs={"counts": counts}, batch_size=None, batch_format="numpy")
    unique.sort(HASH).write_parquet(str(out))
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
    """Equal hashes share a block after the keyed repartition: keep one of each."""
    _, first = np.unique(block[HASH], return_index=True)
    keep = np.sort(first)
    counts.add.remote({"dropped_duplicates": len(block[HASH]) - len(keep)})
    return {column: values[keep] for column, values in block.items()}


def _train_tokenizer(clean_dir: Path, config: PrepareConfig) -> Tokenizer:
    """WordPiece on a bounded sample: the first documents in hash order (a pseudo-random,
    reproducible sample), held-out documents excluded."""
    def sample() -> Iterator[str]:
        documents = ray.data.read_parquet(str(clean_dir)).limit(config.tokenizer_sample_documents)
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
    """The compression filter, tokenization and packing of one batch of documents. Tasks,
    not an actor pool: on a small machine actors would hold every CPU the reader needs."""
    tokenizer, special = _load_tokenizer(tokenizer_path)
    texts = [str(text) for text in batch[TEXT]]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    splits: dict[str, list] = {TRAIN: [], EVAL: []}
    dropped = 0
    for text, digest, encoding in zip(texts, batch[HASH], encodings, strict=True):
        if tokens_per_char(len(encoding.ids), text) > config.max_tokens_per_char:
            dropped += 1
            continue
        splits[EVAL if is_held_out(digest, config.eval_fraction) else TRAIN].append(encoding.ids)
    tables = [sequence_table(pack(token_lists, config.seq_len, special.cls, special.sep), split)
              for split, token_lists in splits.items()]
    kept_tokens = sum(len(ids) + 1 for ids in splits[TRAIN] + splits[EVAL])
    lengths = Counter(f"{LENGTH_BUCKET}{int(np.log2(max(len(encoding.ids), 1)))}" for encoding in encodings)
    packed_tokens = sum(table.num_rows for table in tables) * (config.seq_len - 1)
    counts.add.remote({**lengths, "dropped_compression": dropped,
                       "documents_tokenized": len(texts) - dropped, "tokens_tokenized": kept_tokens,
                       "tokens_dropped_packing": kept_tokens - packed_tokens})
    return pa.concat_tables(tables)


def sequence_table(rows: np.ndarray, split: str | None = None) -> pa.Table:
    """Packed rows as a table with a fixed-length int32 list column `input_ids`."""
    seq_len = rows.shape[1] if rows.ndim == 2 else 0
    ids = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.int32()), seq_len)
    columns = {INPUT_IDS: ids}
    if split is not None:
        columns[SPLIT] = pa.array([split] * len(rows), pa.string())
    return pa.table(columns)


def _tokenize_and_pack(clean_dir: Path, tokenizer_path: Path, config: PrepareConfig, out: Path) -> None:
    counts = StageCounts.remote()
    documents = ray.data.read_parquet(str(clean_dir))
    sequences = documents.map_batches(
        _tokenize_and_pack_batch, fn_kwargs={"tokenizer_path": str(tokenizer_path), "config": config,
                                             "counts": counts},
        batch_size=config.documents_per_pack, batch_format="numpy",
    )
    sequences.write_parquet(str(out))
    write_json(out / COUNTS_FILE, ray.get(counts.get.remote()))


def _split(sequences: ray.data.Dataset, split: str) -> ray.data.Dataset:
    return sequences.map_batches(lambda t: t.filter(pa.compute.equal(t[SPLIT], split)).drop_columns([SPLIT]),
                                 batch_format="pyarrow")


def _ordered(sequences: ray.data.Dataset, config: PrepareConfig) -> ray.data.Dataset:
    """Sorted by token prevalence (ties by a seeded content key) or by the key alone."""
    log_counts = _log_token_counts(sequences, config.vocab_size) if config.order == Order.PREVALENCE else None

    def add_keys(table: pa.Table) -> pa.Table:
        rows = np.asarray(table[INPUT_IDS].combine_chunks().flatten()).reshape(table.num_rows, -1)
        order = -prevalence_scores(rows, log_counts) if log_counts is not None else np.zeros(len(rows))
        return table.append_column(ORDER_KEY, pa.array(order)).append_column(
            TIE_KEY, pa.array(shuffle_keys(rows, config.seed)))

    keyed = sequences.map_batches(add_keys, batch_format="pyarrow")
    return keyed.sort([ORDER_KEY, TIE_KEY]).drop_columns([ORDER_KEY, TIE_KEY])


def _log_token_counts(sequences: ray.data.Dataset, vocab_size: int) -> np.ndarray:
    def count(table: pa.Table) -> dict:
        ids = np.asarray(table[INPUT_IDS].combine_chunks().flatten())
        return {"counts": np.bincount(ids, minlength=vocab_size)[None, :]}

    totals = np.zeros(vocab_size, dtype=np.int64)
    for batch in sequences.map_batches(count, batch_format="pyarrow").iter_batches(batch_format="numpy"):
        totals += batch["counts"].sum(axis=0)
    return np.log1p(totals)


def _write_shards(sequences: ray.data.Dataset, out: Path, per_shard: int) -> list[str]:
    """Shards of `per_shard` sequences in dataset order; existing ones are kept (resume)."""
    names = []
    for index, batch in enumerate(sequences.iter_batches(batch_size=per_shard, batch_format="pyarrow")):
        name = SHARD_PATTERN.format(index)
        if not (out / name).exists():
            _write_table(out / name, batch)
        names.append(name)
    if not names:
        raise CrammitError("no training sequences survived preparation; give a larger --corpus or "
                           "raise --max-tokens-per-char")
    return names


def _concat(batches: Iterator[pa.Table]) -> pa.Table:
    tables = list(batches)
    return pa.concat_tables(tables) if tables else sequence_table(np.zeros((0, 0), np.int32))


def _write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_manifest(directory: Path) -> dict:
    """The manifest of a prepared directory, or a CrammitError saying it is not one."""
    if not (directory / MANIFEST).is_file():
        raise CrammitError(f"{directory} is not a prepared corpus (no {MANIFEST}); "
                           "run `crammit data prepare --out DIR` first")
    return read_json(directory / MANIFEST)


def shard_paths(directory: Path) -> list[Path]:
    return [directory / name for name in read_manifest(directory)["shards"]]

