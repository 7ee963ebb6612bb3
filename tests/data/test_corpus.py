import hashlib
from collections import Counter
from pathlib import Path

import pytest

from crammit.data import corpus
from crammit.data.corpus import EMBEDDED, embedded_documents, load_documents
from crammit.errors import CrammitError

# The 100 most common English words: about 40% of prose tokens, far fewer of code tokens.
COMMON_WORDS = {
    "the", "of", "and", "to", "a", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "as", "with", "his", "they", "i", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there",
    "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about",
    "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him",
    "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way",
    "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now",
    "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_splits_at_blank_lines_and_collapses_whitespace(tmp_path):
    path = write(tmp_path / "a.txt",
                 "First  paragraph\nwraps here.\n\n\n  Second\tone.\n \nThird.\n")
    assert load_documents(str(path), tmp_path / "cache") == [
        "First paragraph wraps here.", "Second one.", "Third."]


def test_directory_reads_all_txt_files_below_it_sorted(tmp_path):
    write(tmp_path / "docs" / "b.txt", "bee")
    write(tmp_path / "docs" / "sub" / "c.txt", "sea")
    write(tmp_path / "docs" / "a.txt", "ay\n\nay two")
    write(tmp_path / "docs" / "ignored.md", "not text")
    assert load_documents(str(tmp_path / "docs"), tmp_path / "cache") == [
        "ay", "ay two", "bee", "sea"]


def test_glob_reads_matching_files(tmp_path):
    write(tmp_path / "x1.txt", "one")
    write(tmp_path / "x2.txt", "two")
    write(tmp_path / "y.txt", "other")
    assert load_documents(str(tmp_path / "x*.txt"), tmp_path / "cache") == ["one", "two"]


def test_non_utf8_bytes_are_replaced(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait\n\nna\xefve")
    assert load_documents(str(path), tmp_path) == ["caf\ufffd au lait", "na\ufffdve"]


@pytest.mark.parametrize("make_spec, message", [
    (lambda d: str(d / "missing.txt"), "does not exist"),
    (lambda d: str(d / "*.txt"), "matches no files"),
    (lambda d: str(write(d / "empty.txt", " \n\n \t\n")), "no non-empty documents"),
    (lambda d: str(write(d / "dir" / "notes.md", "text").parent), "no .txt files"),
])
def test_bad_specs_raise_one_clear_error(tmp_path, make_spec, message):
    with pytest.raises(CrammitError, match=message) as error:
        load_documents(make_spec(tmp_path), tmp_path / "cache")
    assert "\n" not in str(error.value) and "--corpus" in str(error.value)


def test_too_small_embedded_corpus_raises_instead_of_falling_back(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_build_embedded", lambda packages: ["Just one sentence."])
    with pytest.raises(CrammitError, match="only 0.0 MB.*--corpus PATH"):
        embedded_documents(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One real build per test session, shared: building takes tens of seconds."""
    cache_dir = tmp_path_factory.mktemp("embedded")
    return cache_dir, embedded_documents(cache_dir)


def test_embedded_is_large_enough(embedded):
    _, documents = embedded
    assert sum(len(doc.encode()) for doc in documents) >= 5_000_000
    assert all(doc.strip() for doc in documents)


def test_embedded_second_call_hits_the_cache(embedded, monkeypatch):
    cache_dir, documents = embedded
    assert [p.name.startswith("embedded-") for p in cache_dir.iterdir()] == [True]

    def no_build(packages):
        raise AssertionError("rebuilt despite a cache file")

    monkeypatch.setattr(corpus, "_build_embedded", no_build)
    assert load_documents(EMBEDDED, cache_dir) == documents


def test_embedded_build_is_deterministic(embedded, tmp_path):
    def digest(documents: list[str]) -> str:
        return hashlib.sha256("\x00".join(documents).encode()).hexdigest()

    assert digest(embedded_documents(tmp_path)) == digest(embedded[1])
    assert [p.read_bytes() for p in tmp_path.iterdir()] == [
        p.read_bytes() for p in embedded[0].iterdir()]


def test_embedded_reads_like_english_prose_not_code(embedded):
    _, documents = embedded
    words = Counter(w.lower() for doc in documents for w in doc.split())
    common = sum(words[w] for w in COMMON_WORDS) / sum(words.values())
    assert common > 0.35  # measured: 0.40 here, 0.23 for torch/nn/modules/conv.py
    assert sum(">>>" in doc or "def " in doc for doc in documents) < 0.001 * len(documents)
