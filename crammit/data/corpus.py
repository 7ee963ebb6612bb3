"""The embedded corpus: English prose that needs no download (`--corpus embedded`),
built from the docstrings of the installed standard library and packages, and cached."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path

from crammit.errors import CrammitError

EMBEDDED = "embedded"  # the corpus spec naming the built-in corpus
CORPUS_FORMAT_VERSION = 1  # bump when the extraction rules change, to invalidate caches
MIN_EMBEDDED_BYTES = 5_000_000

# Installed packages whose docstrings join the stdlib's; fixed and sorted so the corpus
# depends only on what is installed. Missing ones are skipped.
DOC_PACKAGES = (
    "datasets", "deepspeed", "jinja2", "matplotlib", "networkx", "numpy", "pandas",
    "pyarrow", "pydantic", "ray", "scipy", "seaborn", "sympy", "tokenizers", "torch",
    "transformers",
)
# Tests are code-heavy and idlelib/lib2to3 are legacy tools; site-packages is third-party.
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"}


def embedded_documents(cache_dir: Path) -> list[str]:
    """The embedded default corpus: real English prose available offline anywhere.

    Built from docstrings of the installed Python's standard library and of the
    packages in DOC_PACKAGES, then cached under cache_dir since building takes a while.
    """
    packages = _installed_packages()
    key = hashlib.sha256(
        repr((sys.version, packages, CORPUS_FORMAT_VERSION)).encode()
    ).hexdigest()[:16]
    cache_path = Path(cache_dir) / f"embedded-{key}.txt"
    if cache_path.exists():
        return _read_cache(cache_path)
    documents = _build_embedded(packages)
    size = sum(len(doc.encode()) for doc in documents)
    if size < MIN_EMBEDDED_BYTES:
        raise CrammitError(f"embedded corpus is only {size / 1e6:.1f} MB on this "
                           "installation; pass --corpus PATH")
    _write_cache(cache_path, documents)
    return documents


def _installed_packages() -> list[tuple[str, str]]:
    # find_spec locates a package without importing it; importing torch or ray is slow.
    return [(name, importlib.metadata.version(name)) for name in DOC_PACKAGES
            if importlib.util.find_spec(name) is not None]


def _source_files(packages: list[tuple[str, str]]) -> list[Path]:
    roots = [sysconfig.get_paths()["stdlib"]]
    for name, _ in packages:
        roots += importlib.util.find_spec(name).submodule_search_locations
    return [path for root in roots for path in _python_files(root)]


def _python_files(root: str) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps the walk out of skipped trees; sorting fixes the order.
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        files += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def _build_embedded(packages: list[tuple[str, str]]) -> list[str]:
    # Workers parse files; deduplication runs here, in file order, so output is stable.
    # Spawn, not fork: the caller may run threads (torch, ray) whose held locks a fork copies.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        per_file = pool.map(_file_docstring_paragraphs, _source_files(packages), chunksize=64)
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
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                paragraphs = re.split(r"\n\s*\n", docstring)
                docstrings.append([p for p in map(_clean_paragraph, paragraphs) if _is_prose(p)])
    return docstrings


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


def _read_cache(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_cache(path: Path, documents: list[str]) -> None:
    # One JSON string per line survives any text; the rename makes readers never see
    # a half-written file, even with concurrent builders.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents)
    os.replace(tmp, path)
