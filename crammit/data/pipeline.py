"""Corpus preparation: `crammit data prepare`.

    tokenizer (trained on a bounded sample, or given)
    → Ray Data, in parallel: read → normalise, chunk → tokenize → compression filter
      [→ MinHash buckets, shuffled by bucket: near-duplicates]
    → Ray tasks, a file each: exact dedup → pack, count tokens
    → Ray tasks, a part each: sort (held-out sequences first, then token prevalence or a
      seeded shuffle) → Ray tasks, streaming: merge the sorted runs into eval + shards

The expensive work, normalising and tokenizing each document, runs once, on Ray Data
across the cluster, and writes every kept document's 64-bit content hash and token ids.
The rest reads those files (`DIR` must be on storage every node sees), in the Ray tasks
of `tasks.py`: dedup positions from the hashes (8 bytes a document), packing a file each
in input order keeping only first copies, sorting each part into a run, and merging the
runs, the last merge writing the shards a row group at a time (`external_sort`). Each
stage runs in worker processes of its own (`tasks.RAY_DATA_WORKERS`, `TASK_WORKERS`). No
process holds the corpus, and nothing passes through Ray's object store but blocks in
flight (and, when asked for, the near-duplicate buckets).

Stages are written under `DIR/.work/` and renamed into place when complete, shards are
written one by one atomically, and `manifest.json` comes last: an interrupted prepare
re-runs only what is missing. Document order is the input's and sequence order comes
from content keys, never from timing, and tokenizer training is deterministic
(`train_tokenizer`), so preparing twice gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, replace
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
from crammit.config import PrepareConfig
from crammit.data.corpus import EMBEDDED, embedded_corpus
from crammit.data.external_sort import MERGE_FAN_IN, merge_groups, rows_per_group
from crammit.data.layout import EVAL_FILE, LENGTH_BUCKET, MANIFEST, TOKEN_COUNTS, TOKENIZER, read_manifest
from crammit.data.sources import REPLACED, TEXT, parse_spec, read_corpus
from crammit.data.stages import (
    chunk,
    content_hash,
    duplicate_members,
    is_held_out,
    lsh_band_keys,
    normalize,
    tokens_per_char,
)
from crammit.data.tasks import (
    EVAL,
    HASH,
    IDS,
    RAY_DATA_WORKERS,
    RUN_KEY_BYTES,
    TRAIN,
    StageCounts,
    merge_run,
    pack_file,
    repeated_documents,
    sort_run,
    write_merged,
)
from crammit.data.tokenizer import SpecialIds, TokenIds, train_tokenizer
from crammit.errors import CrammitError
from crammit.io import atomic_path, read_json, write_json

BANDS, BUCKET = "lsh_buckets", "bucket"
COUNTS_FILE, SETTINGS_FILE = "counts.json", "settings.json"
MIN_BLOCK_BYTES = 8 << 20
MAX_BLOCK_BYTES = 2 * MIN_BLOCK_BYTES
IN_FLIGHT_BLOCKS_PER_CPU = 4


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
    # documents, whose per-task overhead then takes a large share of the tokenizing time.
    # No larger than 8 MiB: larger blocks tokenize no faster, and every block in flight
    # holds more memory.
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
    embedded = embedded_corpus(cache_dir) if parse_spec(config.corpus).kind == EMBEDDED else None
    if embedded and (note := embedded.reference_note()):
        print(note, file=sys.stderr)
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
        # Which embedded corpus: it depends on the installed versions of its sources.
        **({"source_sha256": embedded.sha256} if embedded else {}),
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
    documents = read_corpus(config.corpus, cache_dir, config.text_field, RAY_DATA_WORKERS).limit(
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
        documents = read_corpus(config.corpus, cache_dir, config.text_field, RAY_DATA_WORKERS).map_batches(
            _tokenize_batch,
            fn_kwargs={"tokenizer_path": str(tokenizer_path), "config": config, "counts": counts},
            batch_size=config.documents_per_batch, batch_format="pyarrow", runtime_env=RAY_DATA_WORKERS)
        documents.write_parquet(str(out), ray_remote_args={"runtime_env": RAY_DATA_WORKERS})
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
    not an actor pool: the tokenizer loads once per worker process either way, and tasks
    take whatever CPUs the cluster has without a pool size to choose."""
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
    repeated, first_positions = repeated_documents.remote(paths, starts)
    shared = [ray.put(near), repeated, first_positions]  # in the object store once, not once per task
    out.mkdir()
    totals, token_counts = Counter(), np.zeros(config.vocab_size, np.int64)
    for counts, tokens in _completed([pack_file.remote(paths, starts, index, *shared, special, config, out)
                                      for index in range(len(paths))], "packing documents files"):
        totals.update(counts)
        token_counts += tokens
    write_json(out / COUNTS_FILE, dict(totals))
    np.save(out / TOKEN_COUNTS, token_counts)


def _near_duplicates(documents_dir: Path, config: PrepareConfig) -> np.ndarray:
    """MinHash LSH: the hashes of documents sharing a bucket with a smaller hash. Buckets
    meet in the blocks of a keyed shuffle of (bucket, hash) pairs; the dropped hashes
    (not the documents) are gathered."""
    documents = ray.data.read_parquet(str(documents_dir), columns=[HASH, BANDS], runtime_env=RAY_DATA_WORKERS)
    buckets = documents.map_batches(_bucket_rows, batch_format="pyarrow", runtime_env=RAY_DATA_WORKERS)
    members = buckets.repartition(config.partitions, keys=[BUCKET]).map_batches(
        _bucket_duplicates, batch_size=None, batch_format="numpy", runtime_env=RAY_DATA_WORKERS)
    found = [batch[HASH] for batch in members.iter_batches(batch_format="numpy")]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _bucket_rows(table: pa.Table) -> pa.Table:
    """One (bucket, hash) row per LSH bucket of each document."""
    buckets = table[BANDS].combine_chunks()
    return pa.table({BUCKET: buckets.flatten(), HASH: table[HASH].take(pc.list_parent_indices(buckets))})


def _bucket_duplicates(block: dict) -> dict:
    return {HASH: duplicate_members(block[BUCKET].astype("S"), block[HASH])}


def _write_outputs(sequences_dir: Path, counts: dict, config: PrepareConfig, out: Path) -> list[str]:
    """`eval.parquet`, then shards of `sequences_per_shard`, in one order for everything:
    held-out sequences first (in a seeded shuffle order), then training sequences by token
    prevalence (ties by the seeded key) or by the key alone. Each part of the sequences is
    sorted by a Ray task into a run, and the runs are merged on the way to the shards
    (memory bounded, see `external_sort`)."""
    parts = sorted(sequences_dir.glob("*.parquet"))
    group_rows = rows_per_group(config.seq_len * np.dtype(np.int32).itemsize + RUN_KEY_BYTES)
    runs_dir = _stage(sequences_dir.parent / "runs", lambda tmp: _sort_runs(parts, out / TOKEN_COUNTS, config,
                                                                               group_rows, tmp))
    runs = _merged_to_fan_in(sorted(runs_dir.glob("*.parquet")), group_rows)
    names = []
    with tqdm(total=counts[f"sequences_{TRAIN}"], desc="writing shards", unit="seq", unit_scale=True) as bar:
        for written in write_merged.remote(runs, counts[f"sequences_{EVAL}"], config, out):
            name, rows = ray.get(written)
            names.append(name)
            bar.update(rows)
    if not names:
        raise CrammitError("no training sequences survived preparation; give a larger --corpus or "
                           "raise --max-tokens-per-char")
    return names


def _sort_runs(parts: list[Path], token_counts: Path, config: PrepareConfig, group_rows: int,
               out: Path) -> None:
    out.mkdir()
    _wait_for([sort_run.remote(part, token_counts, config, group_rows, out / part.name) for part in parts],
              "sorting runs")


def _merged_to_fan_in(runs: list[Path], group_rows: int) -> list[Path]:
    """Merge runs in groups, pass after pass, until one merge can take them all."""
    passes = 0
    while len(runs) > MERGE_FAN_IN:
        passes += 1
        merged = _stage(runs[0].parent.with_name(f"runs-{passes}"),
                        partial(_merge_pass, merge_groups(runs, MERGE_FAN_IN), group_rows, passes))
        runs = sorted(merged.glob("*.parquet"))
    return runs


def _merge_pass(groups: list[list[Path]], group_rows: int, number: int, out: Path) -> None:
    out.mkdir()
    _wait_for([merge_run.remote(group, out / f"{index:05d}.parquet", group_rows)
               for index, group in enumerate(groups)], f"merging runs (pass {number})")


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
