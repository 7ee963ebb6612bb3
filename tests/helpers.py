"""Test helpers: a generated corpus and tiny CPU run configurations."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from crammit.config import Budget, Device, RecipeConfig, TrainConfig, model_config

SUBJECTS = ["the model", "a researcher", "the optimizer", "each worker", "the tokenizer", "our budget"]
VERBS = ["reads", "writes", "predicts", "counts", "masks", "packs", "trains", "measures"]
OBJECTS = ["the masked tokens", "a long document", "every sequence", "the learning rate",
           "the held-out loss", "a small batch", "the next checkpoint"]


def write_corpus(path: Path, documents: int = 6000, seed: int = 0) -> Path:
    """Grammatical toy English with enough structure for a tiny model to learn quickly."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(documents):
            sentences = (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                         for _ in range(rng.randint(3, 8)))
            out.write(" ".join(sentences).capitalize() + "\n\n")
    return path


def tiny_train_config(run_dir: Path, corpus: Path, **changes) -> TrainConfig:
    """A tiny CPU run: small vocabulary and batches, a token budget, no compile."""
    model = dataclasses.replace(model_config("tiny"), vocab_size=256, num_layers=2)
    defaults = dict(
        run_dir=str(run_dir), model=model, corpus=str(corpus), size_name="tiny",
        recipe=RecipeConfig(batch_size=16, micro_batch_size=8),
        budget=Budget.tokens(10 * 16 * 128), device=Device.CPU, compile=False,
        eval_sequences=32, progress_bar=False,
    )
    return TrainConfig(**{**defaults, **changes})

