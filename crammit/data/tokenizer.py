"""A BERT-style WordPiece tokenizer trained with HF `tokenizers` on the corpus itself."""

from __future__ import annotations

import json
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
CONTINUING_PREFIX = "##"  # WordPiece's mark of a token that continues a word


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        return cls(*(tokenizer.token_to_id(token) for token in (PAD, CLS, SEP, MASK)))


def train_tokenizer(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """Uncased WordPiece with BERT's normaliser and [CLS] ... [SEP] post-processing;
    `documents` may be a stream (a bounded sample of a corpus too large to hold): it is
    spilled to a temporary file and read twice.

    The same documents give the same tokenizer in every process, which is what lets a
    prepare be reproduced from the corpus alone, byte for byte. HF `tokenizers` numbers
    the continuing-subword tokens (`##e`) in hash-map order and breaks frequency ties by
    those numbers (huggingface/tokenizers#1794), so two trainings differ in rare entries;
    the first read finds those tokens (`_ContinuingCharacters`), and training declares them
    up front, sorted, within the vocabulary size asked for. That read is the price
    (benchmarks/RESULTS.md, "Corpus preparation: measurements behind design choices")."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    continuing = _ContinuingCharacters(tokenizer)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spill:
        for text in documents:
            continuing.add(text)
            spill.write(json.dumps(text) + "\n")
        spill.seek(0)
        pinned = [CONTINUING_PREFIX + character for character in sorted(continuing.found)]
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + pinned,
                                            continuing_subword_prefix=CONTINUING_PREFIX, show_progress=False)
        tokenizer.train_from_iterator(map(json.loads, spill), trainer=trainer)
    # The pinned tokens are vocabulary, not special tokens that would match literal text.
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] in SPECIAL_TOKENS]
    tokenizer = Tokenizer.from_str(json.dumps(state))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))],
    )
    return tokenizer


def save_hf_tokenizer(tokenizer_file: Path, out: Path, max_length: int) -> None:
    """The tokenizer in Hugging Face's layout, which `AutoTokenizer` loads, its special tokens
    named. It returns no `token_type_ids`: neither arch trains with them (a pair is
    `[CLS] a [SEP] b [SEP]`), and the crammed BERT has no segment embedding to take them."""
    from transformers import PreTrainedTokenizerFast  # slow to import; only exports need it

    PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
        unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP, mask_token=MASK,
    ).save_pretrained(out)


class _ContinuingCharacters:
    """The characters that follow another within a word, under a tokenizer's normaliser and
    pre-tokenizer: those WordPiece training makes `##` tokens of. A text is split into words
    only if it holds a character that could still add one."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.normalizer, self.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self.found: set[str] = set()
        self.settled: set[str] = set()  # characters of the raw text that can add nothing more

    def add(self, text: str) -> None:
        unsettled = set(text) - self.settled
        if not unsettled:
            return
        words = self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(text))
        self.found.update(*(word[1:] for word, _ in words))
        self.settled.update(character for character in unsettled if self._settled(character))

    def _settled(self, character: str) -> bool:
        # One that splits words (white space, punctuation, CJK) never continues one.
        between = self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(f"a{character}a"))
        return len(between) > 1 or set(self.normalizer.normalize_str(character)) <= self.found


class TokenIds:
    """Token ids of a batch of texts, without special tokens: exactly the ids of
    `encode_batch`, for less of the CPU time that tokenizing, most of a prepare's, takes.

    What it buys: the fast batch API skips character offsets, and texts that the
    tokenizer's normaliser provably leaves unchanged skip the normaliser, a large share of
    encoding time. Learning which characters beyond ASCII it keeps extends that to texts
    with accents (figures: benchmarks/RESULTS.md, "Corpus preparation: measurements behind
    design choices").

    Why the ids are exact: BERT's normaliser works a character at a time (drop controls,
    pad CJK, strip accents, lower-case), so a text made of characters it leaves unchanged
    alone is left unchanged; those characters are learned as texts bring them
    (typographic quotes and dashes, say, where accented letters are not).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.without_normalizer: Tokenizer | None = None
        state = tokenizer.to_str()
        normalizer = json.loads(state)["normalizer"]
        self.kept: set[str] = set()
        self.changed: set[str] = set()
        if normalizer is None or normalizer["type"] == "BertNormalizer":
            self.without_normalizer = Tokenizer.from_str(state)
            self.without_normalizer.normalizer = None
            # Printable ASCII up front: most texts are made of it alone.
            self.kept = {chr(code) for code in range(0x20, 0x7F) if self._keeps(chr(code))}
            self._outside_kept = _outside(self.kept)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if self.without_normalizer is None:
            return _ids(self.tokenizer, texts)
        unchanged = [self._unchanged(text) for text in texts]
        pairs = list(zip(texts, unchanged, strict=True))
        fast = iter(_ids(self.without_normalizer, [text for text, keep in pairs if keep]))
        normalised = iter(_ids(self.tokenizer, [text for text, keep in pairs if not keep]))
        return [next(fast) if keep else next(normalised) for keep in unchanged]

    def _unchanged(self, text: str) -> bool:
        if self._outside_kept.search(text) is None:
            return True
        unknown = set(text) - self.kept
        if not unknown & self.changed:
            learned = {character for character in unknown if self._keeps(character)}
            self.changed |= unknown - learned
            if learned:
                self.kept |= learned
                self._outside_kept = _outside(self.kept)
        return not unknown & self.changed

    def _keeps(self, character: str) -> bool:
        # Combining marks excepted: Unicode reorders a run of them, so a text could change
        # where each alone does not.
        normalizer = self.tokenizer.normalizer
        return normalizer is None or (not unicodedata.combining(character)
                                      and normalizer.normalize_str(character) == character)


def _outside(characters: set[str]) -> re.Pattern:
    """A pattern that finds a character not in `characters`."""
    return re.compile(f"[^{''.join(map(re.escape, sorted(characters)))}]")


def _ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
