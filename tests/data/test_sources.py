import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from crammit.data import sources
from crammit.data.corpus import EmbeddedCorpus
from crammit.data.sources import EMBEDDED, FILES, HF, REPLACED, TEXT, CorpusSpec, parse_spec, read_corpus
from crammit.errors import CrammitError

TEXT_FILE = "First  paragraph\r\nwraps here.\n\n\n  Second\tone.\n \nThird.\n"
TEXT_DOCUMENTS = ["First paragraph wraps here.", "Second one.", "Third."]
COMPRESSIONS = {"": None, ".gz": "gzip", ".zst": "zstd"}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    compression = COMPRESSIONS.get(path.suffix)
    with pa.output_stream(str(path), compression=compression) as out:
        out.write(data)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def documents(dataset: ray.data.Dataset) -> list[tuple[str, int]]:
    """The dataset's (text, replaced) rows, after checking its exact schema."""
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    assert table.schema == pa.schema([(TEXT, pa.string()), (REPLACED, pa.int64())])
    return list(zip(table[TEXT].to_pylist(), table[REPLACED].to_pylist(), strict=True))


@pytest.mark.parametrize("spec, parsed", [
    ("embedded", CorpusSpec(EMBEDDED, EMBEDDED)),
    ("hf:wikitext", CorpusSpec(HF, "wikitext")),
    ("hf:org/web:en@validation", CorpusSpec(HF, "org/web", "en", "validation")),
    ("hf:org/web@train[:10%]", CorpusSpec(HF, "org/web", None, "train[:10%]")),
    ("data/corpus", CorpusSpec(FILES, "data/corpus")),
    ("data/**/*.jsonl.zst", CorpusSpec(FILES, "data/**/*.jsonl.zst")),
    ("s3://bucket/corpus/", CorpusSpec(FILES, "s3://bucket/corpus/")),
    ("file:///tmp/a.txt", CorpusSpec(FILES, "file:///tmp/a.txt")),
    ("./notes:2024.txt", CorpusSpec(FILES, "./notes:2024.txt")),
])
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("hf:", "malformed"), ("hf::en", "malformed"), ("hf:a:b:c", "malformed"),
    ("hf:web@", "malformed"), ("hf:web:@train", "malformed"), ("huggingface:web", "unknown corpus spec"),
])
def test_parse_spec_rejects_bad_forms(spec, message):
    with pytest.raises(CrammitError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize("suffix", COMPRESSIONS)
def test_text_file_splits_at_blank_lines(ray_session, tmp_path, suffix):
    path = write(tmp_path / f"a.txt{suffix}", TEXT_FILE)
    assert documents(read_corpus(str(path), tmp_path)) == [(doc, 0) for doc in TEXT_DOCUMENTS]


def test_text_split_is_the_same_across_chunk_boundaries(ray_session, tmp_path):
    text = ("word " * 7 + "\n \n") * 50 + "last\n\ndone"
    source = sources._TextDocuments([str(write(tmp_path / "a.txt", text))])
    for chunk_chars in (1, 3, 7, 1 << 24):
        source._CHUNK_CHARS = chunk_chars
        tables = source._read_stream(pa.BufferReader(text.encode()), "a.txt")
        assert pa.concat_tables(tables)[TEXT].to_pylist() == ["word " * 6 + "word"] * 50 + ["last", "done"]


def test_invalid_utf8_is_replaced_and_counted(ray_session, tmp_path):
    path = write(tmp_path / "a.txt.gz", b"caf\xe9 ok\n\nclean\n\n\xff\xfe twice")
    assert documents(read_corpus(str(path), tmp_path)) == [
        ("caf\ufffd ok", 1), ("clean", 0), ("\ufffd\ufffd twice", 2)]


@pytest.mark.parametrize("suffix", COMPRESSIONS)
def test_jsonl_keeps_the_text_field_as_written(ray_session, tmp_path, suffix):
    rows = [{"body": "one  two", "id": 1}, {"body": "007", "id": 2}, {"body": "", "id": 3},
            {"body": None, "id": 4}, {"body": "line\nbreak", "id": 5}]
    path = write_jsonl(tmp_path / f"a.jsonl{suffix}", rows)
    # Empty and null texts stay, as empty documents, for the cleaning stage to count.
    assert documents(read_corpus(str(path), tmp_path, text_field="body")) == [
        ("one  two", 0), ("007", 0), ("", 0), ("", 0), ("line\nbreak", 0)]


def test_parquet_reads_the_text_field(ray_session, tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2], "content": ["alpha", "beta"]}), path)
    assert documents(read_corpus(str(path), tmp_path, text_field="content")) == [("alpha", 0), ("beta", 0)]


def test_directory_unions_every_supported_file_below_it(ray_session, tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.txt", "from text\n\nand more")
    write_jsonl(root / "b.json", [{"text": "from json"}])
    write(root / "README.md", "not a corpus file")
    write(root / "sub" / "c.txt.zst", "nested")
    pq.write_table(pa.table({"text": ["from parquet"]}), root / "sub" / "d.parquet")
    assert sorted(documents(read_corpus(str(root), tmp_path))) == [
        ("and more", 0), ("from json", 0), ("from parquet", 0), ("from text", 0), ("nested", 0)]


def test_glob_matches_like_a_shell_glob(ray_session, tmp_path):
    write(tmp_path / "a.txt", "top")
    write(tmp_path / "b.jsonl", '{"text": "skipped"}\n')
    write(tmp_path / "sub" / "c.txt.gz", "nested")
    assert documents(read_corpus(str(tmp_path / "*.txt"), tmp_path)) == [("top", 0)]
    assert sorted(documents(read_corpus(str(tmp_path / "**" / "*.txt*"), tmp_path))) == [
        ("nested", 0), ("top", 0)]


def test_file_uri_is_read(ray_session, tmp_path):
    path = write(tmp_path / "a.txt", "by uri")
    assert documents(read_corpus(path.as_uri(), tmp_path)) == [("by uri", 0)]


def test_unusable_paths_raise_one_clear_line(ray_session, tmp_path):
    write(tmp_path / "notes" / "README.md", "no corpus here")
    cases = {str(tmp_path / "missing"): "does not exist",
             str(tmp_path / "notes" / "README.md"): "unsupported extension",
             str(tmp_path / "notes"): "holds no supported files",
             str(tmp_path / "*.txt"): "matches no supported files",
             "http://example.com/a.txt": "unsupported corpus URI"}
    for spec, message in cases.items():
        with pytest.raises(CrammitError, match=message) as error:
            read_corpus(spec, tmp_path)
        assert "--corpus" in str(error.value) and "\n" not in str(error.value)


def test_missing_text_field_names_the_columns_found(ray_session, tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", [{"body": "x", "id": 1}])
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "b.parquet")
    for name, columns in [("a.jsonl.gz", "body, id"), ("b.parquet", "content")]:
        with pytest.raises(CrammitError, match=rf"no field 'text' \(columns: {columns}\); pass --text-field"):
            read_corpus(str(tmp_path / name), tmp_path)


def test_json_that_is_not_json_lines_is_rejected(ray_session, tmp_path):
    path = write(tmp_path / "a.json", '[\n  {"text": "x"}\n]\n')
    with pytest.raises(CrammitError, match="not JSON lines"):
        read_corpus(str(path), tmp_path)


def rows_with_a_content_field():
    for i in range(5):
        yield {"content": f"document {i}", "id": i}


def test_hf_streams_through_ray(ray_session, tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return datasets.IterableDataset.from_generator(rows_with_a_content_field)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = read_corpus("hf:org/web:en@validation", tmp_path, text_field="content")
    assert calls == [("org/web", "en", "validation", True)]
    assert documents(dataset) == [(f"document {i}", 0) for i in range(5)]
    with pytest.raises(CrammitError, match=r"hf:org/web' has no field 'text' \(columns: content, id\)"):
        read_corpus("hf:org/web", tmp_path)


def test_hf_reads_shards_in_parallel_tasks(ray_session, tmp_path, monkeypatch):
    rows = [{"text": f"document {i}"} for i in range(10)]
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=4)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: stream)
    assert sorted(documents(read_corpus("hf:web", tmp_path))) == sorted((row["text"], 0) for row in rows)
    assert len(sources._HuggingFaceShards(stream, "text").get_read_tasks(parallelism=8)) == 4


def test_embedded_documents_become_rows(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "embedded_corpus",
                        lambda cache_dir: EmbeddedCorpus(["one doc.", "two\ndocs."], {}, ""))
    assert documents(read_corpus("embedded", tmp_path)) == [("one doc.", 0), ("two\ndocs.", 0)]


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no ../shared/data on this machine")
def test_real_corpora_in_shared_data_read_as_documents(ray_session, tmp_path):
    readable = {".txt", ".jsonl", ".parquet", ".gz", ".zst"}
    files = sorted(path for path in SHARED_DATA.rglob("*") if path.suffix in readable)
    if not files:
        pytest.skip("../shared/data holds no corpus files crammit reads")
    dataset = read_corpus(str(files[0]), tmp_path)
    first = dataset.take(5)
    assert first and all(isinstance(row[TEXT], str) for row in first)
