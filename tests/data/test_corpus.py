import ast
import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from crammit.data import corpus
from crammit.data.corpus import embedded_corpus
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
    monkeypatch.setattr(corpus, "_build_embedded", lambda: ["Just one sentence."])
    with pytest.raises(CrammitError, match="only 0.0 MB.*--corpus PATH"):
        embedded_corpus(tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_missing_source_package_is_an_error_not_a_smaller_corpus(tmp_path, monkeypatch):
    find_spec = corpus.importlib.util.find_spec
    monkeypatch.setattr(corpus.importlib.util, "find_spec",
                        lambda name: None if name == "sympy" else find_spec(name))
    with pytest.raises(CrammitError, match="docstrings of sympy, which this installation lacks"):
        embedded_corpus(tmp_path)


@pytest.fixture
def embedded(embedded_cache):
    return embedded_cache


def test_embedded_is_large_enough(embedded):
    documents = embedded[1].documents
    assert sum(len(doc.encode()) for doc in documents) >= 5_000_000
    assert all(doc.strip() for doc in documents)


def test_embedded_second_call_hits_the_cache(embedded, monkeypatch):
    cache_dir, built = embedded
    assert len(list(cache_dir.glob("embedded-*.txt"))) == 1

    def no_build():
        raise AssertionError("rebuilt despite a cache file")

    monkeypatch.setattr(corpus, "_build_embedded", no_build)
    assert embedded_corpus(cache_dir) == built


def test_a_cache_that_does_not_match_its_hash_is_rebuilt(tmp_path, monkeypatch):
    documents = ["A document of prose, with a line\u2028break that JSON keeps raw."] * 3
    monkeypatch.setattr(corpus, "MIN_EMBEDDED_BYTES", 0)
    monkeypatch.setattr(corpus, "_build_embedded", lambda: documents)
    built = embedded_corpus(tmp_path)
    assert built.documents == documents
    [text] = tmp_path.glob("embedded-*.txt")
    assert hashlib.sha256(text.read_bytes()).hexdigest() == built.sha256
    text.write_text('"damaged"\n')
    assert embedded_corpus(tmp_path) == built
    assert text.read_bytes().count(b"\n") == 3


def test_the_reference_versions_are_the_pinned_ones():
    root = Path(__file__).parents[2]
    pins = dict(line.lower().split("==") for line in (root / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    readme_torch = re.search(r"pip install torch==([\d.]+)", (root / "README.md").read_text()).group(1)
    for name, version in corpus.REFERENCE_SOURCES.items():
        if name == "torch":
            assert version.split("+")[0] == readme_torch
        elif name != corpus.PYTHON:
            assert pins[name] == version, name


def test_the_build_is_deterministic_and_the_reference_versions_build_the_reference_corpus(embedded, tmp_path):
    """With the reference versions installed (as CI installs them), the build's hash is the
    pinned one, which no nondeterministic build would reproduce; with others, a second build
    in this session gives the same files."""
    built = embedded[1]
    if built.sources == corpus.REFERENCE_SOURCES:
        assert built.sha256 == corpus.REFERENCE_SHA256
        return
    assert embedded_corpus(tmp_path) == built
    assert [p.read_bytes() for p in tmp_path.glob("embedded-*")] == [
        p.read_bytes() for p in embedded[0].glob("embedded-*")]
    assert built.reference_note() is None


def test_another_corpus_says_which_versions_made_it_differ(embedded):
    built = embedded[1]
    other = corpus.EmbeddedCorpus(built.documents, {**built.sources, "numpy": "0.1"}, "0" * 64)
    note = other.reference_note()
    assert f"numpy 0.1 (reference {corpus.REFERENCE_SOURCES['numpy']})" in note
    assert "-c constraints.txt" in note


def test_embedded_reads_like_english_prose_not_code(embedded):
    documents = embedded[1].documents
    words = Counter(w.lower() for doc in documents for w in doc.split())
    common = sum(words[w] for w in COMMON_WORDS) / sum(words.values())
    assert common > 0.35  # between prose's share and code's, with a margin on each side
    assert sum(">>>" in doc or "def " in doc for doc in documents) < 0.001 * len(documents)


NESTED_DEFINITIONS = '''
"""Module."""
if True:
    def in_if():
        """In an if."""
try:
    class InTry:
        """In a try."""
        async def method(self):
            """An async method."""
            return [lambda: None for _ in ()]
except ValueError:
    def in_except():
        """In an except clause."""
finally:
    def in_finally():
        """In a finally clause."""
match 1:
    case 1:
        def in_case():
            """In a case clause."""
with open("x") as handle:
    for _ in ():
        while False:
            def deep():
                """Deep in blocks."""
                def inner():
                    """Inner."""
'''


def test_docstrings_are_found_in_every_block_in_the_order_of_a_full_walk(tmp_path):
    path = tmp_path / "nested.py"
    path.write_text(NESTED_DEFINITIONS)
    definitions = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    walked = [ast.get_docstring(node) for node in ast.walk(ast.parse(NESTED_DEFINITIONS))
              if isinstance(node, definitions)]
    assert len(walked) == 9
    assert [ast.get_docstring(node) for node in corpus._blocks(ast.parse(NESTED_DEFINITIONS))
            if isinstance(node, definitions)] == walked
    assert len(corpus._file_docstring_paragraphs(path)) == len(walked)
