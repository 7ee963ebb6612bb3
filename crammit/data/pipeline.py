"""Corpus preparation: `crammit data prepare`.

    tokenizer (trained on a bounded sample, or given)
    → Ray Data, in parallel: read → normalise, chunk → tokenize → compression filter
      [→ MinHash buckets, shuffled by bucket: near-duplicates]
    → Ray tasks, a file each: exact dedup → pack, count tokens
    → Ray tasks, a part each: sort (held-out sequences first, then token prevalence or a
      seeded shuffle) → Ray tasks, streaming: merge the sorted runs into eval + shards

The expensive work, normalising and tokenizing each document, runs once, on Ray Data
across the cluster, and writes every kept document's 64-bit content hash and token ids.
The rest reads those files (`DIR` must be on storage every node sees), in Ray tasks
that start in fresh worker processes (`FRESH_WORKERS`): one passes over the hashes (8
bytes a document) to find where each repeated document first occurs, others pack each
file in input order keeping only first copies, sort each part into a run, and merge the
runs, the last merge writing the shards a row group at a time (`external_sort`). No
process holds the corpus, and nothing passes through Ray's object store but blocks in
flight (and, when asked for, the near-duplicate buckets).

Stages are written under `DIR/.work/` and renamed into place when complete, shards are
written one by one atomically, and `manifest.json` comes last: an interrupted prepare
re-runs only what is missing. Document order is the input's and sequence order comes
from content keys, never from timing, and tokenizer training is deterministic
(`train_tokenizer`), so preparing twice gives byte-identical shards.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tokenizers import Tokenizer
from tqdm import tqdm

from crammit.cluster import start_ray
from crammit.data.external_sort import (
    MERGE_FAN_IN,
    merge_groups,
    merge_runs,
    merge_to_run,
    row_groups,
    rows_per_group,
    slices,
    write_run,
)
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
    later_copies,
    lsh_band_keys,
    normalize,
    pack,
    prevalence_scores,
    shuffle_keys,
    tokens_per_char,
)
from crammit.data.tokenizer import SpecialIds, TokenIds, train_tokenizer
from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json

HASH, IDS, BANDS, BUCKET = "hash", "token_ids", "lsh_buckets", "bucket"
SPLIT, ORDER_KEY, TIE_KEY = "split", "order_key", "tie_key"
TRAIN, EVAL = "train", "eval"
COUNTS_FILE, SETTINGS_FILE = "counts.json", "settings.json"
MIN_BLOCK_BYTES = 16 << 20
MAX_BLOCK_BYTES = 2 * MIN_BLOCK_BYTES
IN_FLIGHT_BLOCKS_PER_CPU = 4
HASH_PASS_BYTES = 32 << 20  # content hashes that exact deduplication holds at once
SHARD_ROW_GROUP_ROWS = 8192  # what the last merge holds of the shard it writes
# The tasks after tokenizing run in worker processes of their own: Ray pools workers by
# runtime environment, so a distinct one starts fresh processes, and the tokenizing
# workers, then idle beyond Ray's limit of one idle worker per CPU, exit with what their
# tokenizers and batches left behind (~180 MiB each). Its one setting is Arrow's jemalloc
# pool, which hands freed memory back to the system where the default (mimalloc) keeps
# it: a merge of 16 runs peaked 154 MiB above its start instead of 272 MiB. The price is
# starting those processes, ~3 s in all on 2 cores, which only small corpora notice.
FRESH_WORKERS = {"env_vars": {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}}


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
    documents_per_batch: int = 1024  # documents tokenized, and packed, together
    partitions: int = 16  # blocks of the near-duplicate bucket shuffle


# Without task events: Ray's GCS keeps one per call (up to 100,000), and there is a call
# per batch, so its memory would grow with the corpus (+32 MiB at 3.35 GB).
@ray.remote(num_cpus=0, enable_task_events=False)
class StageCounts:
    """Counts of documents kept and dropped, reported by every batch wherever it runs."""

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
        # The vocabulary is the tokenizer's, which may be smaller than asked: not compared.
        differing = [name for name, value in _settings(config).items()
                     if name != "vocab_size" and manifest["config"].get(name) != value]
        if differing:
            raise CrammitError(f"{out} already holds a corpus prepared with other {', '.join(differing)}; "
                               "choose another --out")
        return manifest
    if not ray.is_initialized():
        start_ray()  # as Ray Data would on first use; the budget below needs the cluster's size
    context = ray.data.DataContext.get_current().copy()
    context.execution_options.preserve_order = True  # packing batches must not depend on timing
    # Ray's default (1 MiB blocks, for 200 blocks) makes a task of every few thousand
    # documents, and per-task overhead then costs a third of the tokenizing time.
    context.target_min_block_size = MIN_BLOCK_BYTES
    # And not Ray's 128 MiB: a reader of one large file holds a few blocks of that size.
    context.target_max_block_size = MAX_BLOCK_BYTES
    # Blocks in flight, not the corpus: without a budget, readers run ahead of tokenizing
    # into Ray's object store, and memory grows with the corpus.
    budget = IN_FLIGHT_BLOCKS_PER_CPU * MIN_BLOCK_BYTES * max(ray.cluster_resources().get("CPU", 1), 1)
    context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
        object_store_memory=budget)
    with ray.data.DataContext.current(context):
        return _prepare(config, out, cache_dir)


def _settings(config: PrepareConfig) -> dict:
    return {**asdict(config), "order": config.order.value}


def _prepare(config: PrepareConfig, out: Path, cache_dir: Path) -> dict:
    work, tokenizer_path = out / ".work", out / TOKENIZER
    # Work an interrupted prepare left behind is reused only under the same settings.
    record = work / SETTINGS_FILE
    if tokenizer_path.exists() and record.exists() and read_json(record) != _settings(config):
        raise CrammitError(f"{out} holds an unfinished prepare with other settings; delete it or "
                           "choose another --out")
    write_json(record, _settings(config))
    if not tokenizer_path.exists():
        with atomic_path(tokenizer_path) as tmp:
            if config.tokenizer:
                shutil.copyfile(config.tokenizer, tmp)
            else:
                _train_tokenizer(config, cache_dir).save(str(tmp))
    # The vocabulary is the tokenizer's: a given one, or a trained one smaller than asked.
    config = replace(config, vocab_size=Tokenizer.from_file(str(tokenizer_path)).get_vocab_size())
    documents_dir = _stage(work / "documents", lambda tmp: _tokenize_documents(
        config, cache_dir, tokenizer_path, tmp))
    sequences_dir = _stage(work / "sequences", lambda tmp: _deduplicate_and_pack(
        documents_dir, tokenizer_path, config, tmp))
    stage_counts = {**read_json(documents_dir / COUNTS_FILE), **read_json(sequences_dir / COUNTS_FILE)}
    if not (out / TOKEN_COUNTS).exists():
        with atomic_path(out / TOKEN_COUNTS) as tmp:
            shutil.copyfile(sequences_dir / TOKEN_COUNTS, tmp)
    shards = _write_outputs(sequences_dir, stage_counts, config, out)
    manifest = {
        "source": config.corpus,
        "config": _settings(config),
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        "counts": stage_counts,
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


def _no_documents(config: PrepareConfig) -> CrammitError:
    return CrammitError(f"corpus {config.corpus!r} has no non-empty documents; pass another --corpus")


def _clean(texts: list[str], config: PrepareConfig) -> tuple[list[str], dict]:
    """Normalised documents, long ones chunked, empty ones dropped; and what was done."""
    kept, empty, chunks_added = [], 0, 0
    for text in texts:
        pieces = chunk(normalize(text, config.lowercase), config.max_document_chars)
        empty += not pieces
        chunks_added += max(len(pieces) - 1, 0)
        kept += pieces
    return kept, {"documents_read": len(texts), "dropped_empty": empty, "chunks_added": chunks_added,
                  "documents_kept": len(kept)}


def _train_tokenizer(config: PrepareConfig, cache_dir: Path) -> Tokenizer:
    """WordPiece on a bounded sample: the corpus's first `tokenizer_sample_documents`
    documents, cleaned as the pipeline cleans them, each once, held-out ones excluded."""
    documents = read_corpus(config.corpus, cache_dir, config.text_field).limit(
        config.tokenizer_sample_documents)
    seen: set[int] = set()

    def sample() -> Iterator[str]:
        for batch in documents.iter_batches(batch_size=config.documents_per_batch, batch_format="pyarrow"):
            for text in _clean(batch[TEXT].to_pylist(), config)[0]:
                digest = content_hash(text)
                if digest not in seen and not is_held_out(digest, config.eval_fraction):
                    seen.add(digest)
                    yield text

    tokenizer = train_tokenizer(sample(), config.vocab_size)
    if not seen:
        raise _no_documents(config)
    return tokenizer


@lru_cache(maxsize=4)
def _token_ids(path: str) -> TokenIds:
    """Loaded once per worker process, not once per batch."""
    return TokenIds(Tokenizer.from_file(path))


def _tokenize_documents(config: PrepareConfig, cache_dir: Path, tokenizer_path: Path, out: Path) -> None:
    """Every document normalised, hashed and tokenized once: a streaming pass writing
    each kept document's hash and token ids (and LSH buckets, for near-duplicates)."""
    counts = StageCounts.remote()
    try:
        documents = read_corpus(config.corpus, cache_dir, config.text_field).map_batches(
            _tokenize_batch,
            fn_kwargs={"tokenizer_path": str(tokenizer_path), "config": config, "counts": counts},
            batch_size=config.documents_per_batch, batch_format="pyarrow")
        documents.write_parquet(str(out))
        totals = ray.get(counts.get.remote())
    finally:
        ray.kill(counts)
    if not totals.get("documents_kept"):
        raise _no_documents(config)
    if not totals.get("documents_tokenized"):
        raise CrammitError(f"the compression filter dropped every document of {config.corpus!r}; "
                           "raise --max-tokens-per-char")
    write_json(out / COUNTS_FILE, totals)


def _tokenize_batch(table: pa.Table, tokenizer_path: str, config: PrepareConfig, counts) -> pa.Table:
    """Clean, tokenize and apply the compression filter to one batch of documents. Tasks,
    not an actor pool: on a small machine actors would hold every CPU the reader needs."""
    texts, cleaned = _clean(table[TEXT].to_pylist(), config)
    token_ids = _token_ids(tokenizer_path)(texts)
    lengths = np.fromiter(map(len, token_ids), np.int64, len(token_ids))
    ratios = tokens_per_char(lengths, np.fromiter(map(len, texts), np.int64, len(texts)))
    kept = np.flatnonzero(ratios <= config.max_tokens_per_char).tolist()
    length_buckets = np.bincount(np.log2(np.maximum(lengths, 1)).astype(np.int64))
    batch_counts = {**cleaned, "replaced_characters": pc.sum(table[REPLACED]).as_py() or 0,
                    "dropped_compression": len(texts) - len(kept), "documents_tokenized": len(kept),
                    **{f"{LENGTH_BUCKET}{k}": int(n) for k, n in enumerate(length_buckets) if n}}
    # Waited for: a call still queued when the stage ends would be missing from its counts.
    ray.get(counts.add.remote(batch_counts))
    kept_texts = [texts[i] for i in kept]
    columns = {HASH: pa.array([content_hash(text) for text in kept_texts], pa.uint64()),
               IDS: pa.array([token_ids[i] for i in kept], pa.list_(pa.int32()))}
    if config.near_duplicate_threshold > 0:
        buckets = lsh_band_keys(kept_texts, config.near_duplicate_threshold, config.minhash_permutations,
                                config.shingle_words, config.seed) if kept_texts else []
        columns[BANDS] = pa.array(buckets, pa.list_(pa.binary()))
    return pa.table(columns)


def _deduplicate_and_pack(documents_dir: Path, tokenizer_path: Path, config: PrepareConfig,
                          out: Path) -> None:
    """Drop near-duplicates (when asked) and all but the first copy of exact duplicates,
    then pack, counting the training sequences' tokens (for the prevalence order).

    A Ray task finds each repeated document's first position from the hashes; then Ray
    tasks pack the stage's files in parallel, each in input order, into part files."""
    special = SpecialIds.of(Tokenizer.from_file(str(tokenizer_path)))
    near = (_near_duplicates(documents_dir, config) if config.near_duplicate_threshold > 0
            else np.zeros(0, np.uint64))
    paths = sorted(documents_dir.glob("*.parquet"))
    starts = np.cumsum([0, *(pq.read_metadata(path).num_rows for path in paths)])
    repeated, first_positions = _repeated_documents.remote(paths, starts)
    shared = [ray.put(near), repeated, first_positions]  # in the object store once, not once per task
    out.mkdir()
    totals, token_counts = Counter(), np.zeros(config.vocab_size, np.int64)
    for counts, tokens in _completed([_pack_file.remote(paths, starts, index, *shared, special, config, out)
                                      for index in range(len(paths))], "packing documents files"):
        totals.update(counts)
        token_counts += tokens
    write_json(out / COUNTS_FILE, dict(totals))
    np.save(out / TOKEN_COUNTS, token_counts)


@ray.remote(runtime_env=FRESH_WORKERS, num_returns=2)
def _repeated_documents(paths: list[Path], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The content hashes that occur more than once (sorted), and the position of each
    one's first occurrence in input order. The hash column (8 bytes a document) is read
    in as many passes as keep each pass's slice of the hash space within HASH_PASS_BYTES,
    so this holds no more whatever the corpus's size. A task, not the driver: the
    driver's heap would keep what the passes freed."""
    passes = max(1, -(-int(starts[-1]) * 2 * np.dtype(np.uint64).itemsize // HASH_PASS_BYTES))
    found_hashes, found_positions = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for slice_index in range(passes):
        hashes, positions = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        for path, start in zip(paths, starts[:-1], strict=True):
            column = pq.read_table(path, columns=[HASH])[HASH].to_numpy()
            rows = np.flatnonzero(column % passes == slice_index)
            hashes.append(column[rows])
            positions.append(start + rows)
        values, first, occurrences = np.unique(np.concatenate(hashes), return_index=True, return_counts=True)
        found_hashes.append(values[occurrences > 1])
        found_positions.append(np.concatenate(positions)[first[occurrences > 1]])
    hashes = np.concatenate(found_hashes)
    order = np.argsort(hashes)
    _return_freed_memory()
    return hashes[order], np.concatenate(found_positions)[order]


@ray.remote(runtime_env=FRESH_WORKERS)
def _pack_file(paths: list[Path], starts: np.ndarray, index: int, near: np.ndarray, repeated: np.ndarray,
               first_positions: np.ndarray, special: SpecialIds, config: PrepareConfig,
               out: Path) -> tuple[dict, np.ndarray]:
    """Pack the batches of documents that begin in file `index` into part files, keeping a
    repeated document only at its first position; returns their counts and token counts."""
    totals: Counter = Counter()
    token_counts = np.zeros(config.vocab_size, np.int64)

    def packed() -> Iterator[pa.Table]:
        nonlocal token_counts
        for position, batch in _document_batches(paths, starts, index, config.documents_per_batch):
            hashes = batch[HASH].to_numpy()
            positions = position + np.arange(len(hashes))
            is_near = np.isin(hashes, near)
            is_later_copy = later_copies(hashes, positions, repeated, first_positions)
            keep = ~is_near & ~is_later_copy
            totals.update({"dropped_near_duplicates": int(is_near.sum()),
                           "dropped_duplicates": int((is_later_copy & ~is_near).sum())})
            rows, counts = _pack_batch(batch.filter(pa.array(keep)), special, config)
            totals.update(counts)
            token_counts += np.bincount(rows[TRAIN].ravel(), minlength=config.vocab_size)
            yield pa.concat_tables(sequence_table(split_rows).append_column(
                SPLIT, pa.repeat(pa.scalar(split), len(split_rows))) for split, split_rows in rows.items())

    for part_index, part in enumerate(slices(packed(), itertools.repeat(config.sequences_per_shard))):
        pq.write_table(part, out / f"{paths[index].stem}-{part_index:05d}.parquet")
    _return_freed_memory()
    return dict(totals), token_counts


def _document_batches(paths: list[Path], starts: np.ndarray, index: int,
                      rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The batches of `rows` documents, at positions that are multiples of `rows` in the
    whole stage, that begin in file `index` (the last reads on into the next files), one
    row group at a time; each with its first position. Batches, and so what packing drops
    at their ends, do not depend on how Ray Data cut the stage into files and row groups:
    on the cluster's size, say."""
    start, end = int(starts[index]), int(starts[index + 1])
    first = -(-start // rows) * rows
    if first >= end:
        return
    groups = itertools.chain.from_iterable(row_groups(path, [HASH, IDS]) for path in paths[index:])
    batches = slices(groups, itertools.chain([first - start], itertools.repeat(rows)))
    next(batches)  # the rows before `first`, which the previous file's last batch packs
    # The positions first: zip stops on them without reading a batch beyond this file's.
    yield from zip(range(first, end, rows), batches, strict=False)


def _near_duplicates(documents_dir: Path, config: PrepareConfig) -> np.ndarray:
    """MinHash LSH: the hashes of documents sharing a bucket with a smaller hash. Buckets
    meet in the blocks of a keyed shuffle of (bucket, hash) pairs; the dropped hashes
    (not the documents) are gathered."""
    buckets = ray.data.read_parquet(str(documents_dir), columns=[HASH, BANDS]).map_batches(
        _bucket_rows, batch_format="pyarrow")
    members = buckets.repartition(config.partitions, keys=[BUCKET]).map_batches(
        _bucket_duplicates, batch_size=None, batch_format="numpy")
    found = [batch[HASH] for batch in members.iter_batches(batch_format="numpy")]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _bucket_rows(table: pa.Table) -> pa.Table:
    """One (bucket, hash) row per LSH bucket of each document."""
    buckets = table[BANDS].combine_chunks()
    return pa.table({BUCKET: buckets.flatten(), HASH: table[HASH].take(pc.list_parent_indices(buckets))})


def _bucket_duplicates(block: dict) -> dict:
    return {HASH: duplicate_members(block[BUCKET].astype("S"), block[HASH])}


def _pack_batch(table: pa.Table, special: SpecialIds, config: PrepareConfig) -> tuple[dict, dict]:
    """Pack one batch of documents into training and held-out sequences, by split
    (documents are held out by content hash, so are their sequences); and the counts."""
    held_out = is_held_out(table[HASH].to_numpy(), config.eval_fraction)
    token_ids = table[IDS].combine_chunks()
    rows = {}
    for split, members in ((TRAIN, ~held_out), (EVAL, held_out)):
        documents = token_ids.filter(pa.array(members))
        offsets = np.asarray(documents.offsets)
        rows[split] = pack(np.asarray(documents.flatten()), offsets - offsets[0], config.seq_len,
                           special.cls, special.sep)
    document_tokens = (pc.sum(pc.list_value_length(token_ids)).as_py() or 0) + table.num_rows  # with [SEP]
    packed_tokens = sum(len(split_rows) for split_rows in rows.values()) * (config.seq_len - 1)
    counts = {"documents_packed": table.num_rows, "document_tokens": document_tokens,
              "tokens_dropped_packing": document_tokens - packed_tokens,
              **{f"sequences_{split}": len(split_rows) for split, split_rows in rows.items()}}
    return rows, counts


def _write_outputs(sequences_dir: Path, counts: dict, config: PrepareConfig, out: Path) -> list[str]:
    """`eval.parquet`, then shards of `sequences_per_shard`, in one order for everything:
    held-out sequences first (in a seeded shuffle order), then training sequences by token
    prevalence (ties by the seeded key) or by the key alone. Each part of the sequences is
    sorted by a Ray task into a run, and the runs are merged on the way to the shards
    (memory bounded, see `external_sort`)."""
    parts = sorted(sequences_dir.glob("*.parquet"))
    group_rows = rows_per_group(config.seq_len * np.dtype(np.int32).itemsize + 16)
    runs_dir = _stage(sequences_dir.parent / "runs", lambda tmp: _sort_runs(parts, out / TOKEN_COUNTS, config,
                                                                               group_rows, tmp))
    keys = [ORDER_KEY, TIE_KEY]
    runs = _merged_to_fan_in(sorted(runs_dir.glob("*.parquet")), keys, group_rows)
    names = []
    with tqdm(total=counts[f"sequences_{TRAIN}"], desc="writing shards", unit="seq", unit_scale=True) as bar:
        for written in _write_merged.remote(runs, keys, counts[f"sequences_{EVAL}"], config, out):
            name, rows = ray.get(written)
            names.append(name)
            bar.update(rows)
    if not names:
        raise CrammitError("no training sequences survived preparation; give a larger --corpus or "
                           "raise --max-tokens-per-char")
    return names


@ray.remote(runtime_env=FRESH_WORKERS)
def _write_merged(runs: list[Path], keys: list[str], eval_rows: int, config: PrepareConfig,
                  out: Path) -> Iterator[tuple[str, int]]:
    """The last merge, in one task that writes what it merges (no shard passes through
    the object store): the held-out sequences, then each shard, a row group at a time;
    yields each shard's name and sequences as it is written. Files already there are kept
    (resume)."""
    ordered = (table.drop_columns(keys) for table in merge_runs(runs, keys))
    eval_groups, shard_groups = _row_group_sizes(eval_rows), _row_group_sizes(config.sequences_per_shard)
    groups = slices(ordered, itertools.chain(eval_groups, itertools.cycle(shard_groups)))
    schema = sequence_table(np.zeros((0, config.seq_len), np.int32)).schema
    _write_groups(out / EVAL_FILE, itertools.islice(groups, len(eval_groups)), schema)
    for index in itertools.count():
        first = next(groups, None)
        if first is None:
            return
        name, shard = SHARD_PATTERN.format(index), itertools.islice(groups, len(shard_groups) - 1)
        yield name, _write_groups(out / name, itertools.chain([first], shard), schema)


def _row_group_sizes(rows: int) -> list[int]:
    """A file of `rows` rows in row groups of SHARD_ROW_GROUP_ROWS (the last may be shorter)."""
    return [min(SHARD_ROW_GROUP_ROWS, rows - start) for start in range(0, rows, SHARD_ROW_GROUP_ROWS)]


def _write_groups(path: Path, groups: Iterator[pa.Table], schema: pa.Schema) -> int:
    """Write `groups` to `path` (atomically), a row group each, unless it exists; the rows.
    Each group is written as one chunk: Parquet's pages follow the chunks, which follow
    the runs a merge drew the rows from, and the bytes must not depend on those."""
    if path.exists():
        return sum(group.num_rows for group in groups)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for group in groups:
            writer.write_table(group.combine_chunks(), row_group_size=group.num_rows)
            rows += group.num_rows
    return rows


def _sort_runs(parts: list[Path], token_counts: Path, config: PrepareConfig, group_rows: int,
               out: Path) -> None:
    out.mkdir()
    _wait_for([_sort_run.remote(part, token_counts, config, group_rows, out / part.name) for part in parts],
              "sorting runs")


def _merged_to_fan_in(runs: list[Path], keys: list[str], group_rows: int) -> list[Path]:
    """Merge runs in groups, pass after pass, until one merge can take them all."""
    passes = 0
    while len(runs) > MERGE_FAN_IN:
        passes += 1
        merged = _stage(runs[0].parent.with_name(f"runs-{passes}"),
                        partial(_merge_pass, merge_groups(runs, MERGE_FAN_IN), keys, group_rows, passes))
        runs = sorted(merged.glob("*.parquet"))
    return runs


def _merge_pass(groups: list[list[Path]], keys: list[str], group_rows: int, number: int, out: Path) -> None:
    out.mkdir()
    _wait_for([_merge_to_run.remote(group, keys, out / f"{index:05d}.parquet", group_rows)
               for index, group in enumerate(groups)], f"merging runs (pass {number})")


@ray.remote(runtime_env=FRESH_WORKERS)
def _merge_to_run(runs: list[Path], keys: list[str], path: Path, group_rows: int) -> None:
    merge_to_run(runs, keys, path, group_rows)
    _return_freed_memory()


@ray.remote(runtime_env=FRESH_WORKERS)
def _sort_run(part: Path, token_counts: Path, config: PrepareConfig, group_rows: int, run: Path) -> None:
    table = pq.read_table(part)
    rows = sequence_rows(table)
    order = (-prevalence_scores(rows, np.log1p(np.load(token_counts))) if config.order == Order.PREVALENCE
             else np.zeros(len(rows)))
    order[np.asarray(pc.equal(table[SPLIT], EVAL))] = -np.inf
    keyed = table.drop_columns([SPLIT]).append_column(ORDER_KEY, pa.array(order)).append_column(
        TIE_KEY, pa.array(shuffle_keys(rows, config.seed)))
    write_run(keyed, [ORDER_KEY, TIE_KEY], run, group_rows)
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand what a task freed back to the system: Ray keeps the worker process for the next
    task, and the allocators (Arrow's pool, the C heap) would keep it for the process."""
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; other C libraries lack it
    if trim is not None:
        trim(0)


def _completed(tasks: list, description: str) -> Iterator:
    """The tasks' results as they finish, each let go once handed over (packing returns a
    vocabulary-sized array per file); a progress bar counts them. The first task to fail
    raises at once, not once the others are done."""
    remaining = tasks
    del tasks  # a finished task's result leaves the object store once its last reference goes
    with tqdm(total=len(remaining), desc=description, unit="task") as bar:
        while remaining:
            (done,), remaining = ray.wait(remaining, num_returns=1)
            yield ray.get(done)
            bar.update()


def _wait_for(tasks: list, description: str) -> None:
    for _ in _completed(tasks, description):
        pass
