import random

from tokenizers import Tokenizer

from crammit.data.tokenizer import SPECIAL_TOKENS, TokenIds, train_tokenizer

TEXTS = ["the model reads a long document", "Upper Case Words", "café naïve résumé", "中文字符 mixed in",
         "control\x07char and\x7fdelete", "tab\tand\nnewline", "zero\u200bwidth", "digits 0123 and $%&*!"]


# Two combining marks that BERT's normaliser keeps each alone but reorders together
# (canonical order: combining class 216 before 226); both in the vocabulary, so a text
# that skipped the normaliser would get other ids.
REORDERED_MARKS = "notes x\U0001D16D\U0001D165y"


def test_token_ids_equal_the_tokenizers_own_encoding():
    tokenizer = train_tokenizer(TEXTS * 20 + [REORDERED_MARKS] * 20, vocab_size=120)
    rng = random.Random(0)
    alphabet = "abcdefghij ABC .,!?éü中\x01\t“”—’\u0301\u0327ǅ\u200b"
    texts = TEXTS + [REORDERED_MARKS] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
                                         for _ in range(300)]
    expected = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    token_ids = TokenIds(tokenizer)
    assert token_ids(texts) == expected
    # BERT's normaliser: texts it leaves unchanged skip it, typographic punctuation included.
    assert token_ids._unchanged("“quoted” — text") and not token_ids._unchanged("café")


def test_training_twice_gives_the_same_tokenizer():
    # Many words of equal frequency: upstream training breaks their ties differently from
    # one run to the next (huggingface/tokenizers#1794), so without the pinned `##` tokens
    # these trainings disagree.
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    documents = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(200)]
    trained = {train_tokenizer(iter(documents), vocab_size=400).to_str() for _ in range(5)}
    assert len(trained) == 1
    # The pinned tokens count within the vocabulary asked for, not on top of it.
    assert Tokenizer.from_str(trained.pop()).get_vocab_size() == 400


def test_continuing_subwords_are_vocabulary_not_special_tokens():
    tokenizer = train_tokenizer(iter(TEXTS * 20), vocab_size=120)
    assert {token.content for token in tokenizer.get_added_tokens_decoder().values()} == set(SPECIAL_TOKENS)
    assert "##o" in tokenizer.get_vocab()
    assert tokenizer.encode("##o", add_special_tokens=False).tokens != ["##o"]  # literal text, not a token


def test_continuing_subwords_are_exactly_those_of_the_documents_numbered_in_sorted_order():
    rng = random.Random(1)
    alphabet = "abc ABC .,!?éü中\x01\t İΣς–“”"
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    documents = TEXTS * 5 + noise
    tokenizer = train_tokenizer(iter(documents), vocab_size=200)
    continuing = {character for text in documents for word, _ in
                  tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
                  for character in word[1:]}
    pinned = {token[2:] for token in tokenizer.get_vocab() if token.startswith("##") and len(token) == 3}
    assert pinned == continuing
    # All of them declared up front, in sorted order: numbered right after the special tokens.
    numbered = sorted((tokenizer.token_to_id("##" + character), character) for character in continuing)
    assert numbered == list(enumerate(sorted(continuing), start=len(SPECIAL_TOKENS)))
