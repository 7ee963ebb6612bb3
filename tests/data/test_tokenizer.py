import random

from crammit.data.tokenizer import TokenIds, train_tokenizer

TEXTS = ["the model reads a long document", "Upper Case Words", "café naïve résumé", "中文字符 mixed in",
         "control\x07char and\x7fdelete", "tab\tand\nnewline", "zero\u200bwidth", "digits 0123 and $%&*!"]


def test_token_ids_equal_the_tokenizers_own_encoding():
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=120)
    rng = random.Random(0)
    alphabet = "abcdefghij ABC .,!?éü中\x01\t"
    texts = TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    expected = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert TokenIds(tokenizer)(texts) == expected
    assert TokenIds(tokenizer).bare is not None  # BERT's normaliser: plain texts skip it
