"""Fine-tuning one model on one task: encoding, schedule, the head learning, determinism."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from crammit.config import Arch, GlueRecipe, model_config
from crammit.data.tokenizer import CLS, SEP, train_tokenizer
from crammit.eval.finetune import encode, finetune, padding_id, warmup_cosine
from crammit.eval.glue_data import TASKS, GlueSplit
from crammit.model.build import build_model

WORDS = ["film", "plot", "actor", "scene", "story", "music", "ending", "cast"]
POSITIVE, NEGATIVE = ["great", "lovely", "superb"], ["awful", "dull", "boring"]
MODEL = dataclasses.replace(model_config("tiny"), num_layers=2, vocab_size=200, seq_len=32)


def sentiment_split(examples: int, seed: int) -> GlueSplit:
    """Label 1 when the sentence holds a positive word: learnable from one token."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(examples):
        label = rng.random() < 0.5
        words = rng.sample(WORDS, 3) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        texts.append("the " + " ".join(words))
        labels.append(int(label))
    return GlueSplit(texts, None, np.array(labels, dtype=np.int64))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([" ".join(WORDS + POSITIVE + NEGATIVE + ["the", "a", "is"])] * 20, vocab_size=200)


def test_warmup_then_cosine_to_zero():
    total = 100
    factors = [warmup_cosine(step, total, 0.1) for step in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:-1], factors[11:], strict=True))
    assert factors[-1] < 0.001


def test_pairs_are_framed_and_truncated_to_the_sequence_length(tokenizer):
    long = " ".join(["film"] * 40)
    split = GlueSplit([long, "a plot"], [long, "the cast"], np.array([0, 1]))
    encoded = encode(tokenizer, split, seq_len=16)
    assert encoded.lengths().tolist()[0] == 16
    ids = encoded.ids[encoded.offsets[1]:encoded.offsets[2]].tolist()
    assert ids[0] == tokenizer.token_to_id(CLS) and ids.count(tokenizer.token_to_id(SEP)) == 2
    input_ids, padding_mask, labels = encoded.batch(np.array([1, 0]), padding_id(tokenizer))
    assert input_ids.shape == (2, 16) and padding_mask[0].sum() == len(ids) and padding_mask[1].all()
    assert (input_ids[0][~padding_mask[0]] == padding_id(tokenizer)).all()
    assert labels.tolist() == [1, 0]
    assert tokenizer.truncation is None  # encoding leaves the caller's tokenizer as it was


def run(tokenizer, task="sst2", weights=None, seed=0, train=None, dev=None, epochs=3):
    data = {"train": encode(tokenizer, train or sentiment_split(256, seed=1), 32),
            "dev": encode(tokenizer, dev or sentiment_split(128, seed=2), 32)}
    recipe = GlueRecipe(lr=2e-3, epochs=epochs, seq_len=32)
    reports = []
    scores = finetune(MODEL, weights, TASKS[task], data, padding_id(tokenizer), recipe, seed,
                      torch.device("cpu"), report=reports.append)
    return scores, reports


def test_the_head_learns_a_learnable_task_and_reports_each_epoch(tokenizer):
    torch.set_num_threads(1)
    scores, reports = run(tokenizer)
    assert scores["accuracy"] > 0.9
    assert [report["epoch"] for report in reports] == [1, 2, 3]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_same_seed_same_scores_and_pretrained_weights_are_used(tokenizer):
    torch.set_num_threads(1)
    first, _ = run(tokenizer, seed=3, epochs=2)
    again, _ = run(tokenizer, seed=3, epochs=2)
    assert first == again
    # Weights that are all zero make every example look the same: chance accuracy.
    from crammit.model.bert import CrammedBert

    zeros = {name: torch.zeros_like(tensor) for name, tensor in CrammedBert(MODEL).state_dict().items()}
    zeroed, _ = run(tokenizer, weights=zeros, seed=3, epochs=2)
    assert zeroed["accuracy"] < 0.7 < first["accuracy"]


def test_regression_head_on_scores(tokenizer):
    torch.set_num_threads(1)

    def scored(examples, seed):
        split = sentiment_split(examples, seed)
        return GlueSplit(split.text_a, split.text_a, split.labels.astype(np.float32) * 5)

    scores, _ = run(tokenizer, task="stsb", train=scored(256, 1), dev=scored(128, 2))
    assert set(scores) == {"pearson", "spearman"}
    assert scores["pearson"] > 0.8


def test_the_head_sits_on_the_original_bert_too(tokenizer):
    torch.set_num_threads(1)
    config = dataclasses.replace(MODEL, arch=Arch.BERT, dropout=0.1)
    weights = build_model(config).state_dict()  # what a bert-arch run saves as model.safetensors
    data = {"train": encode(tokenizer, sentiment_split(256, seed=1), 32),
            "dev": encode(tokenizer, sentiment_split(128, seed=2), 32)}
    recipe = GlueRecipe(lr=2e-3, epochs=3, seq_len=32)
    cpu = torch.device("cpu")
    scores = finetune(config, weights, TASKS["sst2"], data, padding_id(tokenizer), recipe, 0, cpu)
    assert scores["accuracy"] > 0.9
