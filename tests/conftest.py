"""Shared fixtures: a small generated corpus and a cache directory, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_corpus


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")

