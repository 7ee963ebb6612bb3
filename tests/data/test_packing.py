import numpy as np

from crammit.data.packing import pack_documents
from crammit.data.tokenizer import SpecialIds, train_tokenizer

DOCUMENTS = [f"document number {i} says the cat sat on the mat and looked at the dog." for i in range(200)]


def test_tokenizer_round_trips_text():
    tokenizer = train_tokenizer(DOCUMENTS, vocab_size=300)
    text = "the cat sat on the mat"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.get_vocab_size() <= 300


def test_packed_rows_have_the_sequence_length_and_special_tokens():
    tokenizer = train_tokenizer(DOCUMENTS, vocab_size=300)
    special = SpecialIds.of(tokenizer)
    packed = pack_documents(tokenizer, DOCUMENTS, seq_len=32)
    assert packed.dtype == np.int32 and packed.shape[1] == 32 and len(packed) > 10
    assert (packed[:, 0] == special.cls).all()
    expected = [t for d in DOCUMENTS for t in (*tokenizer.encode(d, add_special_tokens=False).ids,
                                                 special.sep)]
    # Documents follow each other, each closed by [SEP]; only the ragged tail is dropped.
    stream = packed[:, 1:].ravel().tolist()
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 31
