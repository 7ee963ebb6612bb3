"""Corpus specs to Ray Datasets of documents: the first stage of corpus preparation.

Every source is read by Ray Data tasks across the cluster, never gathered in one process:
text, JSON-lines, parquet and hf sources stream a block at a time (memory bounded whatever
a file's size), and only the small embedded corpus passes through the driver. Each dataset has
exactly the columns TEXT (string) and REPLACED (int64).
"""

from __future__ import annotations

import functools
import io
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.context import DataContext
from ray.data.datasource import Datasource, FileBasedDatasource, ReadTask

from crammit.data.corpus import EMBEDDED, embedded_corpus
from crammit.errors import CrammitError

if TYPE_CHECKING:
    import datasets

TEXT = "text"  # column holding a document's text
REPLACED = "replaced"  # column: U+FFFD that decoding put in this document (0 if the source held text)

HF, FILES = "hf", "files"  # spec kinds besides EMBEDDED
TXT, JSON, PARQUET = "txt", "json", "parquet"  # file formats, in the order they are unioned
_FORMATS = {".txt": TXT, ".json": JSON, ".jsonl": JSON, ".parquet": PARQUET}
_COMPRESSIONS = {".gz", ".zst"}  # outer compression Arrow streams; parquet compresses inside
_FORMS = ("pass --corpus embedded, hf:NAME[:CONFIG][@SPLIT], or a .txt/.jsonl/.json/.parquet "
          "file (text and JSON may end in .gz or .zst), directory, glob or URI")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")  # a blank line: the end of a document
# Documents per table that a read task takes from an HF stream and hands to Ray Data:
# bounds what the task holds between hand-offs, whatever the dataset's size, and spreads
# the cost of each table over thousands of documents.
_HF_DOCUMENTS_PER_TABLE = 4096
# A reader parses JSON lines many times faster than a CPU tokenizes them, so one reader
# keeps the tokenizing of this many CPUs fed.
CPUS_PER_READER = 8


@dataclass(frozen=True)
class CorpusSpec:
    """A parsed corpus spec: where the documents are and how to read them."""

    kind: str  # HF, FILES or EMBEDDED
    location: str  # hf dataset name, or a path, glob or URI
    config: str | None = None  # hf config name
    split: str = "train"  # hf split


def parse_spec(spec: str) -> CorpusSpec:
    """Parse `embedded`, `hf:NAME[:CONFIG][@SPLIT]`, or a path, glob or URI of files."""
    if spec == EMBEDDED:
        return CorpusSpec(EMBEDDED, EMBEDDED)
    if spec.startswith(f"{HF}:"):
        return _parse_hf(spec)
    prefix = re.match(r"([A-Za-z]+):(?!//)", spec)  # "name:" that is neither hf: nor a URI
    if prefix:
        raise CrammitError(f"unknown corpus spec form {prefix.group(0)!r} in {spec!r}; {_FORMS} "
                           "(write ./ before a local path that contains ':')")
    return CorpusSpec(FILES, spec)


def _parse_hf(spec: str) -> CorpusSpec:
    # Split at '@' first: splits such as "train[:10%]" contain ':'.
    name_config, at, split = spec[len(HF) + 1:].partition("@")
    parts = name_config.split(":")
    if (at and not split) or len(parts) > 2 or not all(parts):
        raise CrammitError(f"malformed corpus spec {spec!r}; write hf:NAME[:CONFIG][@SPLIT], "
                           "e.g. hf:wikitext:wikitext-103-raw-v1@train")
    return CorpusSpec(HF, parts[0], parts[1] if len(parts) == 2 else None, split or "train")


def read_corpus(spec: str, cache_dir: Path, text_field: str = "text",
                runtime_env: dict | None = None) -> ray.data.Dataset:
    """The documents a corpus spec names, as a lazy Ray Dataset with columns TEXT and REPLACED.

    text_field names the column holding the text in hf, JSON and parquet sources; the
    read tasks run in `runtime_env` (Ray's default when None).
    """
    parsed = parse_spec(spec)
    if parsed.kind == EMBEDDED:
        documents = embedded_corpus(cache_dir).documents
        return ray.data.from_items([{TEXT: doc, REPLACED: 0} for doc in documents])
    # Reading is light next to what follows (parsing JSON lines costs a small fraction of
    # the CPU time of tokenizing them), so readers reserve no CPU: the reader of one large
    # file would otherwise hold a CPU while mostly waiting on back-pressure, half of a
    # 2-CPU machine.
    # Without a CPU to bound them, at most one per CPUS_PER_READER runs at once.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    readers = {"num_cpus": 0, "concurrency": max(1, cpus // CPUS_PER_READER), "runtime_env": runtime_env}
    if parsed.kind == HF:
        return _read_hf(parsed, text_field, readers)
    return _read_files(parsed.location, text_field, readers)


def _documents(table: pa.Table, text_field: str) -> pa.Table:
    """A table of text-source rows as documents; a null text becomes empty, which the
    cleaning stage drops and counts."""
    text = pc.fill_null(pc.cast(table[text_field], pa.string()), "")
    return pa.table({TEXT: text, REPLACED: pa.array([0] * len(text), pa.int64())})


def _missing_field(source: str, text_field: str, columns: list[str]) -> CrammitError:
    return CrammitError(f"corpus {source!r} has no field {text_field!r} (columns: "
                        f"{', '.join(columns) or 'none'}); pass --text-field NAME")


def _read_hf(spec: CorpusSpec, text_field: str, readers: dict) -> ray.data.Dataset:
    import datasets  # slow to import, and only this source needs it

    stream = datasets.load_dataset(spec.location, spec.config, split=spec.split, streaming=True)
    # Streams built from generators do not know their columns until the first row.
    columns = stream.column_names or list(next(iter(stream), {}))
    if text_field not in columns:
        raise _missing_field(f"hf:{spec.location}", text_field, columns)
    return ray.data.read_datasource(_HuggingFaceShards(stream.select_columns([text_field]), text_field),
                                    **readers)


class _HuggingFaceShards(Datasource):
    """Streams a datasets.IterableDataset, one read task per group of its shards (files).

    Used instead of ray.data.from_huggingface, which in Ray 2.60 needs aiohttp and
    transformers, queries the Hub, and reads an IterableDataset in a single task.
    """

    def __init__(self, stream: datasets.IterableDataset, text_field: str):
        super().__init__()
        self._stream, self._text_field = stream, text_field

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # a stream's size is unknown until it is read

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: DataContext | None = None) -> list[ReadTask]:
        tasks = max(1, min(parallelism, self._stream.num_shards))
        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(functools.partial(_read_hf_shard, self._stream.shard(tasks, i), self._text_field),
                         metadata, per_task_row_limit=per_task_row_limit) for i in range(tasks)]


def _read_hf_shard(stream: datasets.IterableDataset, text_field: str) -> Iterator[pa.Table]:
    for batch in stream.with_format("arrow").iter(batch_size=_HF_DOCUMENTS_PER_TABLE):
        yield _documents(batch, text_field)


def check_corpus(spec: str, text_field: str = "text") -> None:
    """What can be checked of a corpus spec without Ray, before a cluster starts: its form,
    that its files exist in a supported format, and that JSON or Parquet ones hold the
    text field."""
    parsed = parse_spec(spec)
    if parsed.kind != FILES:
        return
    filesystem, by_format = _files_by_format(parsed.location)
    for fmt in (JSON, PARQUET):
        if by_format[fmt]:
            _check_text_field(filesystem, by_format[fmt][0], fmt, text_field)


def _files_by_format(location: str) -> tuple[pafs.FileSystem, dict[str, list[str]]]:
    glob_at = next((i for i, c in enumerate(location) if c in "*?["), None)
    filesystem, paths = _list_path(location) if glob_at is None else _list_glob(location, glob_at)
    return filesystem, {fmt: [p for p in paths if _format_of(p) == fmt] for fmt in (TXT, JSON, PARQUET)}


def _read_files(location: str, text_field: str, readers: dict) -> ray.data.Dataset:
    filesystem, by_format = _files_by_format(location)
    parts = [_read_format(filesystem, fmt, fmt_paths, text_field, readers)
             for fmt, fmt_paths in by_format.items() if fmt_paths]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _read_format(filesystem: pafs.FileSystem, fmt: str, paths: list[str], text_field: str,
                 readers: dict) -> ray.data.Dataset:
    if fmt == TXT:
        return ray.data.read_datasource(_TextDocuments(paths, filesystem=filesystem), **readers)
    _check_text_field(filesystem, paths[0], fmt, text_field)
    if fmt == JSON:
        # Not ray.data.read_json: Arrow's reader parses a file whole in one task, and
        # lines=True goes through pandas, which turns a text of "007" into the number 7.
        return ray.data.read_datasource(_JsonLinesDocuments(paths, text_field, filesystem=filesystem),
                                        **readers)
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, columns=[text_field], **readers)
    # The same arguments as the read, so Ray Data fuses the two into one task.
    return dataset.map_batches(functools.partial(_documents, text_field=text_field), batch_format="pyarrow",
                               **readers)


def _list_path(location: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem, and the file or sorted supported files below the directory, at location."""
    filesystem, root = _filesystem(location)
    kind = filesystem.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise CrammitError(f"corpus path {location!r} does not exist; {_FORMS}")
    if kind == pafs.FileType.File:
        if _format_of(root) is None:
            raise CrammitError(f"corpus file {location!r} has an unsupported extension; {_FORMS}")
        return filesystem, [root]
    paths = _supported_files(filesystem, root, recursive=True)
    if not paths:
        raise CrammitError(f"corpus directory {location!r} holds no supported files; {_FORMS}")
    return filesystem, paths


def _list_glob(location: str, glob_at: int) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and the sorted supported files that a glob matches."""
    base = posixpath.dirname(location[:glob_at] + "_")  # the directory above the first wildcard
    pattern = location[len(base):].lstrip("/")
    filesystem, root = _filesystem(base or ".")
    paths = []
    if filesystem.get_file_info(root).type == pafs.FileType.Directory:
        # Without '/' or '**' a pattern matches in its own directory only, as a shell glob does.
        paths = _supported_files(filesystem, root, recursive="/" in pattern or "**" in pattern)
    # fnmatch's '*' crosses '/'; so "**/" may match no directory at all, as in glob.glob.
    full_pattern = posixpath.join(root, pattern).replace("**/", "*")
    paths = [p for p in paths if fnmatchcase(p, full_pattern)]
    if not paths:
        raise CrammitError(f"corpus glob {location!r} matches no supported files; {_FORMS}")
    return filesystem, paths


def _supported_files(filesystem: pafs.FileSystem, root: str, recursive: bool) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and _format_of(i.path))


def _filesystem(base: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in base:
        return pafs.LocalFileSystem(), str(Path(base).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(base)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise CrammitError(f"unsupported corpus URI {base!r} ({e}); {_FORMS}") from e


def _format_of(path: str) -> str | None:
    stem, ext = posixpath.splitext(path.lower())
    if ext in _COMPRESSIONS:
        fmt = _FORMATS.get(posixpath.splitext(stem)[1])
        return fmt if fmt != PARQUET else None
    return _FORMATS.get(ext)


def _check_text_field(filesystem: pafs.FileSystem, path: str, fmt: str, text_field: str) -> None:
    """Fail before the pipeline runs: Ray 2.60's read_parquet turns a missing column into nulls."""
    if fmt == PARQUET:
        columns = pq.read_schema(path, filesystem=filesystem).names
    else:
        with filesystem.open_input_stream(path) as raw:  # decompresses by extension
            lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
            first = next((line for line in lines if line.strip()), None)
        if first is None:
            return  # an empty file names no columns; the others are read all the same
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise CrammitError(f"corpus file {path!r} is not JSON lines; write one JSON object per line")
        columns = list(row)
    if text_field not in columns:
        raise _missing_field(path, text_field, columns)


class _TextDocuments(FileBasedDatasource):
    """Streams text files, decompressed by extension, as documents separated by blank lines.

    Whitespace inside a document collapses to single spaces; bytes that are not UTF-8
    decode to U+FFFD, counted per document in REPLACED.
    """

    _CHUNK_CHARS = 1 << 24  # bounds a task's memory to a few times this, whatever the file's size

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        # Universal newlines, as Path.read_text: "\r\n" and "\r" end lines too.
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace")
        pending = ""  # the last paragraph read so far, which the next chunk may continue
        while chunk := text.read(self._CHUNK_CHARS):
            *paragraphs, pending = _PARAGRAPH_BREAK.split(pending + chunk)
            yield _text_table(paragraphs)
        yield _text_table([pending])


def _text_table(paragraphs: list[str]) -> pa.Table:
    return _document_table([doc for doc in (" ".join(p.split()) for p in paragraphs) if doc])


def _document_table(documents: list[str]) -> pa.Table:
    return pa.table({TEXT: pa.array(documents, pa.string()),
                     REPLACED: pa.array([doc.count("\ufffd") for doc in documents], pa.int64())})


class _JsonLinesDocuments(FileBasedDatasource):
    """Streams JSON-lines files, decompressed by extension, `_DOCUMENTS_PER_TABLE`
    documents at a time.

    Bytes that are not UTF-8 decode to U+FFFD, counted per document in REPLACED; a row
    without the text field (or with a null) becomes an empty document, dropped and counted
    downstream; a line that is not JSON stops the read with its file and line number.
    """

    # Parsed documents a read task holds as Python strings before handing them to Ray Data
    # as one table: bounds the task's memory whatever the file's size, and spreads the cost
    # of each table over thousands of documents.
    _DOCUMENTS_PER_TABLE = 4096

    def __init__(self, paths: list[str], text_field: str, **kwargs) -> None:
        super().__init__(paths, **kwargs)
        self.text_field = text_field

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        documents = []
        for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="replace"), start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get(self.text_field)
            except (json.JSONDecodeError, AttributeError) as error:
                raise CrammitError(f"corpus file {path!r} line {number} is not a JSON object; "
                                   "write one JSON object per line") from error
            documents.append("" if text is None else str(text))
            if len(documents) == self._DOCUMENTS_PER_TABLE:
                yield _document_table(documents)
                documents = []
        yield _document_table(documents)
