import hashlib
from collections import Counter

import pytest

from crammit.data import corpus
from crammit.data.corpus import embedded_documents
from crammit.errors import CrammitError

# The 100 most common English words: a large share of the words of prose, a far smaller
# one of code's.
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


def test_too_small_embedded_corpus_raises_instead_of_falling_back(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_build_embedded", lambda packages: ["Just one sentence."])
    with pytest.raises(CrammitError, match="only 0.0 MB.*--corpus PATH"):
        embedded_documents(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def embedded(embedded_cache):
    return embedded_cache


def test_embedded_is_large_enough(embedded):
    _, documents = embedded
    assert sum(len(doc.encode()) for doc in documents) >= 5_000_000
    assert all(doc.strip() for doc in documents)


def test_embedded_second_call_hits_the_cache(embedded, monkeypatch):
    cache_dir, documents = embedded
    assert len(list(cache_dir.glob("embedded-*"))) == 1

    def no_build(packages):
        raise AssertionError("rebuilt despite a cache file")

    monkeypatch.setattr(corpus, "_build_embedded", no_build)
    assert embedded_documents(cache_dir) == documents


def test_embedded_build_is_deterministic(embedded, tmp_path):
    def digest(documents: list[str]) -> str:
        return hashlib.sha256("\x00".join(documents).encode()).hexdigest()

    assert digest(embedded_documents(tmp_path)) == digest(embedded[1])
    assert [p.read_bytes() for p in tmp_path.glob("embedded-*")] == [
        p.read_bytes() for p in embedded[0].glob("embedded-*")]


def test_embedded_reads_like_english_prose_not_code(embedded):
    _, documents = embedded
    words = Counter(w.lower() for doc in documents for w in doc.split())
    common = sum(words[w] for w in COMMON_WORDS) / sum(words.values())
    assert common > 0.35  # between prose's share and code's, with a margin on each side
    assert sum(">>>" in doc or "def " in doc for doc in documents) < 0.001 * len(documents)
