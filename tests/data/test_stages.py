import numpy as np

from crammit.data.stages import (
    chunk,
    content_hash,
    duplicate_members,
    is_held_out,
    later_copies,
    lsh_band_keys,
    normalize,
    pack,
    prevalence_scores,
    shingles,
    shuffle_keys,
    tokens_per_char,
)
from tests.helpers import near_duplicate_documents


def test_normalize_applies_nfkc_whitespace_and_case():
    assert normalize("  Ｆｕｌｌ\u00a0width\n\tﬁle  ", lowercase=True) == "full width file"
    assert normalize("Keep Case", lowercase=False) == "Keep Case"
    assert normalize(" \n\t ", lowercase=True) == ""


def test_normalize_strips_accents_for_an_uncased_tokenizer_as_berts_normaliser_does():
    from tokenizers import normalizers

    bert = normalizers.BertNormalizer(lowercase=True)
    for text in ["Café Naïve Résumé", "Ångström ﬁancée", "Ḍ̇ ḍ \u1e0d", "“quoted” — dash"]:
        assert normalize(text, lowercase=True) == bert.normalize_str(normalize(text, lowercase=True))
    assert normalize("Café", lowercase=True) == "cafe"
    assert normalize("Café", lowercase=False) == "Café"


def test_chunk_splits_giant_lines_at_spaces_and_keeps_every_character():
    text = " ".join(f"word{i}" for i in range(10_000))
    pieces = chunk(text, max_chars=1000)
    assert all(len(piece) <= 1000 for piece in pieces) and len(pieces) > 50
    assert " ".join(pieces) == text
    assert chunk("x" * 2500, max_chars=1000) == ["x" * 1000, "x" * 1000, "x" * 500]  # no space: hard cut
    assert chunk("", 10) == [] and chunk("short", 10) == ["short"]


def test_exact_duplicates_share_a_hash_and_the_split_is_stable():
    assert content_hash("same text") == content_hash("same text") != content_hash("same text!")
    digests = np.array([content_hash(f"document {i}") for i in range(20_000)], dtype=np.uint64)
    held = is_held_out(digests, 0.02)
    assert 0.015 < held.mean() < 0.025
    np.testing.assert_array_equal(held, is_held_out(digests.copy(), 0.02))
    assert is_held_out(digests[held][:1], 0.02).all() and not is_held_out(digests[~held][:1], 0.02).any()


def test_compression_statistic_separates_prose_from_noise():
    np.testing.assert_array_equal(tokens_per_char(np.array([20, 0, 3]), np.array([100, 0, 2])),
                                  [0.2, 0.0, 1.5])


def test_pack_concatenates_documents_with_separators():
    documents = [[5, 6, 7], [8], [9, 10, 11, 12]]
    offsets = np.cumsum([0, *map(len, documents)])
    rows = pack(np.concatenate(documents), offsets, seq_len=4, cls_id=1, sep_id=2)
    # stream: 5 6 7 2 8 2 9 10 11 12 2 -> rows of 3 after [CLS], tail of 2 dropped
    np.testing.assert_array_equal(rows, [[1, 5, 6, 7], [1, 2, 8, 2], [1, 9, 10, 11]])
    assert rows.dtype == np.int32
    assert pack(np.zeros(0, np.int32), np.zeros(1), seq_len=4, cls_id=1, sep_id=2).shape == (0, 4)


def test_prevalence_puts_sequences_of_common_tokens_first():
    log_counts = np.log1p(np.array([0, 1000, 500, 3, 1]))
    sequences = np.array([[3, 4, 3], [1, 1, 2], [1, 2, 4]])
    order = np.argsort(-prevalence_scores(sequences, log_counts), kind="stable")
    assert order.tolist() == [1, 2, 0]


def test_shuffle_keys_are_seeded_and_content_based():
    sequences = np.arange(40, dtype=np.int32).reshape(10, 4)
    keys = shuffle_keys(sequences, seed=1)
    assert (keys >= 0).all() and len(set(keys.tolist())) == 10
    np.testing.assert_array_equal(keys, shuffle_keys(sequences.copy(), seed=1))
    assert not np.array_equal(keys, shuffle_keys(sequences, seed=2))
    np.testing.assert_array_equal(shuffle_keys(sequences[::-1], seed=1), keys[::-1])


def test_shingles_are_word_ngrams():
    assert shingles("a b c d", 3) == [b"a b c", b"b c d"]
    assert shingles("short", 3) == [b"short"]


def test_near_duplicates_share_a_bucket_and_unrelated_documents_do_not():
    originals, near_copies = near_duplicate_documents(distinct=40, copies=10)
    keys = lsh_band_keys(originals + near_copies, threshold=0.8, num_perm=128, shingle_width=5, seed=0)
    shares = [bool(set(keys[i]) & set(keys[len(originals) + i])) for i in range(len(near_copies))]
    assert all(shares)
    unrelated = [bool(set(keys[i]) & set(keys[j])) for i in range(len(originals)) for j in range(i)]
    assert not any(unrelated)


def test_duplicate_members_keep_the_smallest_id_of_each_bucket():
    keys = np.array([b"k1", b"k2", b"k1", b"k3", b"k2", b"k1"], dtype="S2")
    ids = np.array(["c", "b", "a", "d", "e", "b"])
    assert duplicate_members(keys, ids).tolist() == ["b", "c", "e"]  # k1 keeps a, k2 keeps b
    twice = np.array(["a", "a", "b"])  # exact copies of the smallest id are not its duplicates
    assert duplicate_members(np.array([b"k", b"k", b"k"]), twice).tolist() == ["b"]
    assert duplicate_members(keys[:0], ids[:0]).tolist() == []


def test_later_copies_keep_each_document_where_it_first_occurs():
    hashes = np.array([7, 3, 7, 9, 3, 7], dtype=np.uint64)
    repeated, first_positions = np.array([3, 7], dtype=np.uint64), np.array([1, 0])
    assert later_copies(hashes, np.arange(6), repeated, first_positions).tolist() == [
        False, False, True, False, True, True]
    tail = later_copies(hashes[3:], np.arange(3, 6), repeated, first_positions)  # a later file
    assert tail.tolist() == [False, True, True]
    assert not later_copies(hashes, np.arange(6), repeated[:0], first_positions[:0]).any()
