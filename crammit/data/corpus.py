"""The embedded corpus: English prose that needs no download (`--corpus embedded`),
built from the docstrings of the standard library and a fixed list of packages, and cached
with its content hash."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import sysconfig
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crammit.errors import CrammitError

EMBEDDED = "embedded"  # the corpus spec naming the built-in corpus
CORPUS_FORMAT_VERSION = 1  # bump when the extraction rules change, to invalidate caches
MIN_EMBEDDED_BYTES = 5_000_000

# The packages whose docstrings join the stdlib's, fixed and sorted: every one is a
# dependency of crammit (directly, or through torch, ray and transformers), so every install
# builds from the same list and only their versions can differ.
DOC_PACKAGES = (
    "datasets", "deepspeed", "jinja2", "matplotlib", "networkx", "numpy", "pandas",
    "pyarrow", "pydantic", "ray", "scipy", "seaborn", "sympy", "tokenizers", "torch",
    "transformers",
)
PYTHON = "python"  # the stdlib's entry in a corpus's sources
# The corpus that crammit's shipped figures (the README's, notebooks/) were measured on:
# built from these versions (the packages' are constraints.txt's, torch's the README's
# install command's) and having this content hash. Another install builds another corpus,
# and says how it differs.
REFERENCE_SOURCES = {
    PYTHON: "3.11.7", "datasets": "5.2.0", "deepspeed": "0.19.8", "jinja2": "3.1.6",
    "matplotlib": "3.11.2", "networkx": "3.6.1", "numpy": "2.4.6", "pandas": "3.1.1",
    "pyarrow": "26.0.1", "pydantic": "2.14.4", "ray": "2.60.0", "scipy": "1.17.1",
    "seaborn": "0.13.2", "sympy": "1.14.0", "tokenizers": "0.23.3", "torch": "2.13.0+cpu",
    "transformers": "5.25.0",
}
REFERENCE_SHA256 = "f61bdd2ae8cb428fb0507d87e21bab55a27e453ca9888a9b8bebc91271629953"
# Tests are code-heavy and idlelib/lib2to3 are legacy tools; site-packages is third-party.
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class EmbeddedCorpus:
    documents: list[str]
    sources: dict[str, str]  # PYTHON and each of DOC_PACKAGES -> the version built from
    sha256: str  # of the documents as cached: one JSON string per line

    def reference_note(self) -> str | None:
        """One line when this is not the reference corpus, naming the versions that differ."""
        if self.sha256 == REFERENCE_SHA256:
            return None
        differing = [f"{name} {version} (reference {REFERENCE_SOURCES.get(name)})"
                     for name, version in self.sources.items() if REFERENCE_SOURCES.get(name) != version]
        why = f"built from {', '.join(differing)}" if differing else "same versions, other files"
        return (f"note: this embedded corpus (sha256 {self.sha256[:12]}) is not the one crammit's "
                f"published figures used ({REFERENCE_SHA256[:12]}): {why}; "
                "install with -c constraints.txt on Python "
                f"{REFERENCE_SOURCES[PYTHON]} to reproduce them")


def embedded_corpus(cache_dir: Path) -> EmbeddedCorpus:
    """The embedded default corpus: real English prose available offline anywhere.

    Built from docstrings of the Python standard library and of the packages in
    DOC_PACKAGES, then cached under cache_dir since building takes a while; a cache whose
    content no longer matches its recorded hash is rebuilt.
    """
    sources = _sources()
    key = hashlib.sha256(repr((sorted(sources.items()), CORPUS_FORMAT_VERSION)).encode()).hexdigest()[:16]
    text_path, record_path = Path(cache_dir) / f"embedded-{key}.txt", Path(cache_dir) / f"embedded-{key}.json"
    if record_path.exists():
        text = text_path.read_bytes()
        digest = hashlib.sha256(text).hexdigest()
        if digest == json.loads(record_path.read_text())["sha256"]:
            return EmbeddedCorpus(_documents(text), sources, digest)
    documents = _build_embedded()
    size = sum(len(doc.encode()) for doc in documents)
    if size < MIN_EMBEDDED_BYTES:
        raise CrammitError(f"embedded corpus is only {size / 1e6:.1f} MB on this "
                           "installation; pass --corpus PATH")
    text = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents).encode()
    digest = hashlib.sha256(text).hexdigest()
    # The record comes last: a cache without one is unfinished and is built again.
    _write_atomically(text_path, text)
    _write_atomically(record_path, json.dumps({"sources": sources, "sha256": digest}, indent=1).encode())
    return EmbeddedCorpus(documents, sources, digest)


def _sources() -> dict[str, str]:
    # find_spec locates a package without importing it; importing torch or ray is slow.
    missing = [name for name in DOC_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise CrammitError(f"the embedded corpus is built from the docstrings of {', '.join(missing)}, "
                           "which this installation lacks; reinstall crammit (pip install -e .) "
                           "or pass --corpus PATH")
    return {PYTHON: platform.python_version(),
            **{name: importlib.metadata.version(name) for name in DOC_PACKAGES}}


def _source_files() -> list[Path]:
    roots = [sysconfig.get_paths()["stdlib"]]
    for name in DOC_PACKAGES:
        roots += importlib.util.find_spec(name).submodule_search_locations
    return [path for root in roots for path in _python_files(root)]


def _python_files(root: str) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps the walk out of skipped trees; sorting fixes the order.
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        files += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def _build_embedded() -> list[str]:
    # Workers parse files; deduplication runs here, in file order, so output is stable.
    # Spawn, not fork: the caller may run threads (torch, ray) whose held locks a fork copies.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        per_file = pool.map(_file_docstring_paragraphs, _source_files(), chunksize=64)
    seen: set[str] = set()
    documents = []
    for docstrings in per_file:
        for paragraphs in docstrings:
            fresh = []
            for paragraph in paragraphs:
                if paragraph not in seen:
                    seen.add(paragraph)
                    fresh.append(paragraph)
            if fresh:
                documents.append("\n".join(fresh))
    return documents


def _file_docstring_paragraphs(path: Path) -> list[list[str]]:
    """The prose paragraphs of each module, class and function docstring in one file."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return []
    docstrings = []
    for node in _blocks(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                paragraphs = re.split(r"\n\s*\n", docstring)
                docstrings.append([p for p in map(_clean_paragraph, paragraphs) if _is_prose(p)])
    return docstrings


def _blocks(tree: ast.Module) -> Iterator[ast.AST]:
    """The nodes of `ast.walk(tree)` that can hold a docstring or contain a node that does
    (statements, `except` and `case` clauses), in its order: the walk skips expressions,
    which are most of a module's nodes and hold no docstrings."""
    todo = deque([tree])
    while todo:
        node = todo.popleft()
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, _BLOCK_NODES))
        yield node


_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)


# Doctests, shell sessions, RST directives, assignments and comments.
_CODE_LINE = re.compile(r"\s*(>>>|\.\.\.|\$ |\.\. |#|[\w.]+(\[.*\])? *=[^=])")
_RULE_LINE = re.compile(r"\s*[-=~^*#+_:`'\"<>]{3,}\s*")  # RST headers, table borders
_FIELD_LINE = re.compile(r"\s*\**\w+\s+:(\s|$)|\s*\w+\s*\([^)]*\)\s*:")  # "x : int", "x (int):"
_RST_ROLE = re.compile(r"(?:(?::[\w-]+)+:)?`+~?([^`]*?)`+")  # :func:`name`, ``literal``
_SENTENCE = re.compile(r"[a-z][.!?](\s|$)")


def _clean_paragraph(paragraph: str) -> str:
    """The paragraph as one line of plain text, or "" when it is code or markup."""
    if _is_code_or_markup(paragraph.strip("\n").splitlines()):
        return ""
    # Render inline markup as Sphinx would show it, so the tokenizer sees words, not RST.
    text = _RST_ROLE.sub(r"\1", " ".join(paragraph.split()))
    return text[:-1] if text.endswith("::") else text


def _is_code_or_markup(lines: list[str]) -> bool:
    # Indented lines mean a code block or argument descriptions; bullet continuations are prose.
    indented = any(ln[:1] in (" ", "\t") for ln in lines)
    if indented and not lines[0].startswith(("- ", "* ")):
        return True
    return any(_CODE_LINE.match(ln) or _RULE_LINE.fullmatch(ln) or _FIELD_LINE.match(ln) or "|" in ln
               for ln in lines)


def _is_prose(text: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in text)
    return (len(text.split()) >= 8 and letters >= 0.8 * len(text)
            and _SENTENCE.search(text) is not None)


def _documents(text: bytes) -> list[str]:
    # Split on newlines only: JSON escapes them, but not other line breaks (U+2028).
    return [json.loads(line) for line in text.decode("utf-8").split("\n")[:-1]]


def _write_atomically(path: Path, data: bytes) -> None:
    # The rename makes readers never see a half-written file, even with concurrent builders.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
