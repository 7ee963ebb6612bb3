"""Shared fixtures: a small generated corpus and a cache directory, made once per session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import TINY_VOCAB, prepare_config, write_corpus, write_jsonl_corpus

if TYPE_CHECKING:
    from crammit.data.corpus import EmbeddedCorpus


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> tuple[Path, EmbeddedCorpus]:
    """A cache directory holding the embedded corpus, built once per session (building takes
    tens of seconds), and the corpus."""
    from crammit.data.corpus import embedded_corpus

    cache = tmp_path_factory.mktemp("embedded")
    return cache, embedded_corpus(cache)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster (2 CPUs) shared by every test that needs Ray, with the Ray Train
    settings `crammit.cluster.start_ray` gives the clusters it starts."""
    ray = pytest.importorskip("ray")
    from crammit.cluster import RAY_TRAIN_ENV

    ray.shutdown()  # a CLI test may have started a default cluster in this process
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": RAY_TRAIN_ENV})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory, corpus_file, cache_dir, ray_session) -> Path:
    """`corpus_file` prepared as `crammit train` prepares a corpus, for the tiny test model."""
    from crammit.config import PrepareConfig
    from crammit.data.pipeline import prepare_corpus

    out = tmp_path_factory.mktemp("toy") / "data"
    prepare_corpus(PrepareConfig(corpus=str(corpus_file), vocab_size=TINY_VOCAB, seq_len=128), out, cache_dir)
    return out


@pytest.fixture(scope="session")
def toy_ingest(toy_data) -> dict:
    """`ingest(toy_data)`, made once: the TorchTrainer datasets `launch(config, data=...)`
    takes, shared by the runs on `toy_data` as a study's trials share their study's."""
    from crammit.train.ingest import ingest

    return ingest(toy_data)


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory, ray_session):
    """A corpus prepared once by `crammit data prepare`'s pipeline: (out, corpus, manifest)."""
    from crammit.data.pipeline import prepare_corpus

    root = tmp_path_factory.mktemp("prepared")
    corpus = write_jsonl_corpus(root / "corpus.jsonl")
    return root / "out", corpus, prepare_corpus(prepare_config(corpus), root / "out", root / "cache")
