"""`crammit data prepare` end to end on Ray Data, on a JSONL corpus the test writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from crammit.config import SequenceOrder
from crammit.data import pipeline
from crammit.data.inspect import describe
from crammit.data.layout import INPUT_IDS, MANIFEST, TOKEN_COUNTS, shard_paths
from crammit.data.pipeline import prepare_corpus
from crammit.data.stages import prevalence_scores
from crammit.data.tokenizer import SpecialIds
from crammit.errors import CrammitError
from tests.helpers import DUPLICATES, EMPTY, NOISE, PROSE, near_duplicate_documents, prepare_config


def read_rows(path) -> np.ndarray:
    return np.asarray(pq.read_table(path)[INPUT_IDS].combine_chunks().flatten()).reshape(-1, 32)


@pytest.fixture(scope="module")
def prepared(prepared_corpus):
    out, corpus, manifest = prepared_corpus
    return out.parent, corpus, manifest  # (root, corpus, manifest): outputs in root / 'out'


@pytest.mark.slow
def test_stages_count_what_they_drop(prepared):
    _, _, manifest = prepared
    counts = manifest["counts"]
    assert counts["documents_read"] == PROSE + DUPLICATES + EMPTY + NOISE + 1
    assert counts["dropped_empty"] == EMPTY
    assert counts["chunks_added"] >= 5  # the giant line became several documents
    assert counts["dropped_duplicates"] >= DUPLICATES  # toy prose repeats itself beyond those
    assert counts["dropped_compression"] >= NOISE  # character noise tokenizes badly
    assert counts["documents_tokenized"] > 0.5 * PROSE  # normal prose is kept
    assert manifest["train_sequences"] > 600 and manifest["eval_sequences"] > 0


@pytest.mark.slow
def test_shards_hold_fixed_length_int32_sequences_starting_with_cls(prepared):
    root, _, manifest = prepared
    out = root / "out"
    tokenizer_cls = SpecialIds.of(Tokenizer.from_file(str(out / "tokenizer.json"))).cls
    assert len(manifest["shards"]) >= 2
    for path in shard_paths(out):
        table = pq.read_table(path)
        assert table.schema.field(INPUT_IDS).type.list_size == 32
        assert str(table.schema.field(INPUT_IDS).type.value_type) == "int32"
        rows = read_rows(path)
        assert (rows[:, 0] == tokenizer_cls).all()


@pytest.mark.slow
def test_prevalence_order_puts_common_token_sequences_first(prepared):
    root, _, _ = prepared
    rows = np.concatenate([read_rows(path) for path in shard_paths(root / "out")])
    counts = np.bincount(rows.ravel(), minlength=400)
    scores = prevalence_scores(rows, np.log1p(counts))
    assert (np.diff(scores) <= 1e-9).all()
    stored = np.load(root / "out" / TOKEN_COUNTS)  # what the order used, kept for `inspect`
    np.testing.assert_array_equal(stored, counts[: len(stored)])
    assert counts[len(stored):].sum() == 0


@pytest.mark.slow
def test_preparing_twice_gives_identical_shards_and_resume_redoes_only_missing_ones(prepared, tmp_path,
                                                                                     monkeypatch):
    root, corpus, manifest = prepared
    again = tmp_path / "again"
    same = prepare_config(corpus)  # the tokenizer is trained again, and must come out the same
    # Merging the sorted runs two at a time, in several passes, must not change a byte either.
    passes, merge_pass = [], pipeline._merge_pass

    def counted_merge_pass(*args):
        passes.append(args)
        merge_pass(*args)

    # Nor must Ray Data cutting the documents into other files (as on a larger cluster).
    files, deduplicate_and_pack = [], pipeline._deduplicate_and_pack

    def counted_deduplicate_and_pack(documents_dir, *args):
        files.append(len(list(documents_dir.glob("*.parquet"))))
        deduplicate_and_pack(documents_dir, *args)

    monkeypatch.setattr(pipeline, "MERGE_FAN_IN", 2)
    monkeypatch.setattr(pipeline, "_merge_pass", counted_merge_pass)
    monkeypatch.setattr(pipeline, "MIN_BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(pipeline, "MAX_BLOCK_BYTES", 32 << 10)
    monkeypatch.setattr(pipeline, "_deduplicate_and_pack", counted_deduplicate_and_pack)
    prepare_corpus(same, again, root / "cache")
    assert len(passes) >= 2 and files[0] >= 4
    for name in [*manifest["shards"], "eval.parquet", "tokenizer.json"]:
        assert (again / name).read_bytes() == (root / "out" / name).read_bytes(), name

    kept = again / manifest["shards"][0]
    kept_mtime = kept.stat().st_mtime_ns
    (again / manifest["shards"][-1]).unlink()
    (again / MANIFEST).unlink()
    prepare_corpus(same, again, root / "cache")
    assert kept.stat().st_mtime_ns == kept_mtime
    last = manifest["shards"][-1]
    assert (again / last).read_bytes() == (root / "out" / last).read_bytes()


@pytest.mark.slow
def test_shuffle_order_and_inspect(prepared, tmp_path):
    root, corpus, _ = prepared
    shuffled = prepare_corpus(prepare_config(corpus, order=SequenceOrder.SHUFFLE), tmp_path / "shuffled",
                              root / "cache")
    assert shuffled["train_sequences"] == prepared[2]["train_sequences"]
    assert prepare_corpus(prepare_config(corpus), root / "out", root / "cache") == prepared[2]  # complete
    with pytest.raises(CrammitError, match="other order"):
        prepare_corpus(prepare_config(corpus, order=SequenceOrder.SHUFFLE), root / "out", root / "cache")
    text = describe(root / "out")
    assert "training sequences" in text and "top 20 tokens" in text and "dropped_duplicates" in text


@pytest.mark.slow
def test_near_duplicates_are_removed_when_asked(tmp_path, ray_session):
    originals, near_copies = near_duplicate_documents(distinct=300, copies=30)
    corpus = tmp_path / "near.jsonl"
    corpus.write_text("".join(json.dumps({"body": text}) + "\n" for text in originals + near_copies))
    config = prepare_config(corpus, near_duplicate_threshold=0.8, max_tokens_per_char=1.0)
    counts = prepare_corpus(config, tmp_path / "out", tmp_path / "cache")["counts"]
    assert counts["dropped_near_duplicates"] == len(near_copies)
    assert counts["documents_packed"] == len(originals)
