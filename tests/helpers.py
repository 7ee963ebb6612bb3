"""Test helpers: a generated corpus and tiny CPU run configurations."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from crammit.config import (
    Arch,
    Budget,
    Device,
    GlueRecipe,
    LaunchOptions,
    PrepareConfig,
    RecipeConfig,
    TrainConfig,
    model_config,
)

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


TINY_VOCAB = 256


def tiny_train_config(run_dir: Path, corpus: Path, **changes) -> TrainConfig:
    """A tiny CPU run: small vocabulary and batches, a token budget, no compile, no progress
    bar. `changes` may name fields of the run and of its LaunchOptions alike."""
    model = dataclasses.replace(model_config("tiny"), vocab_size=TINY_VOCAB, num_layers=2)
    launch_fields = {field.name for field in dataclasses.fields(LaunchOptions)}
    launch = LaunchOptions(**{"progress_bar": False,
                              **{key: value for key, value in changes.items() if key in launch_fields}})
    defaults = dict(
        run_dir=str(run_dir), model=model, corpus=str(corpus), size_name="tiny",
        recipe=RecipeConfig(batch_size=16, micro_batch_size=8),
        budget=Budget.tokens(10 * 16 * 128), device=Device.CPU, compile=False,
        max_eval_sequences=32, launch=launch,
    )
    run_changes = {key: value for key, value in changes.items() if key not in launch_fields}
    return TrainConfig(**{**defaults, **run_changes})


PROSE, DUPLICATES, EMPTY, NOISE = 3000, 40, 5, 30


def write_jsonl_corpus(path: Path) -> Path:
    """Prose plus what preparation must remove: duplicates, empty documents, character
    noise, and one giant line."""
    rng = random.Random(0)
    prose = [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                      for _ in range(rng.randint(3, 8))) for _ in range(PROSE)]
    noise = ["".join(rng.choice("qxzj0123456789$#@!") for _ in range(400)) for _ in range(NOISE)]
    giant = " ".join(prose[:400])  # one enormous line: must be chunked, not kept whole
    documents = prose + prose[:DUPLICATES] + [""] * EMPTY + noise + [giant]
    rng.shuffle(documents)
    with path.open("w") as out:
        for document in documents:
            out.write(json.dumps({"body": document}) + "\n")
    return path


def prepare_config(corpus: Path, **changes) -> PrepareConfig:
    """Small settings for the JSONL test corpus: several shards of 32-token sequences."""
    settings = dict(corpus=str(corpus), text_field="body", vocab_size=400, seq_len=32,
                    max_document_chars=2000, sequences_per_shard=300, documents_per_batch=256)
    return PrepareConfig(**{**settings, **changes})


def near_duplicate_documents(distinct: int, copies: int) -> tuple[list[str], list[str]]:
    """`distinct` documents of 200 random words, and near-copies of the first `copies`
    (one word changed: word 5-gram Jaccard similarity about 0.95)."""
    rng = random.Random(1)
    vocabulary = [f"{rng.choice('bcdfg')}{rng.choice('aeiou')}{rng.choice('lmnrst')}{i}" for i in range(3000)]
    originals = [" ".join(rng.choice(vocabulary) for _ in range(200)) for _ in range(distinct)]
    near_copies = []
    for original in originals[:copies]:
        words = original.split()
        words[rng.randrange(len(words))] = "changed"
        near_copies.append(" ".join(words))
    return originals, near_copies


def write_finished_run(run_dir: Path, texts: list[str], seed: int = 0, arch: Arch = Arch.CRAMMED) -> Path:
    """A run directory holding what a finished `crammit train` leaves for evaluation: the
    config, a tokenizer trained on `texts`, and a (randomly initialised) tiny final model."""
    import torch

    from crammit.data.layout import TOKENIZER
    from crammit.data.tokenizer import train_tokenizer
    from crammit.model.build import build_model
    from crammit.train import rundir

    config = tiny_train_config(run_dir, Path("unused"))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch))
    run_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(texts, TINY_VOCAB).save(str(run_dir / TOKENIZER))
    torch.manual_seed(seed)
    rundir.save_final_model(run_dir, build_model(config.model), config)
    rundir.save_config(run_dir, config)
    return run_dir


def write_glue_result(run_dir: Path, task: str, seed: int, scores: dict[str, float],
                      recipe: GlueRecipe | None = None) -> None:
    """What a finished fine-tune leaves in the run's glue/seeds/ (scores as fractions)."""
    from crammit.eval.glue_results import FinetuneJob, Init, save_scores

    job = FinetuneJob(str(run_dir), task, seed, Init.PRETRAINED)
    save_scores(job, scores, recipe or GlueRecipe(), "glue-dir:/x", train_examples=10, elapsed_s=1.0,
                device="cpu")


GLUE_WORDS = ["cats", "dogs", "sleep", "run", "the", "park", "quietly", "today", "rain", "falls"]


def write_glue_dir(root: Path, seed: int = 0) -> Path:
    """Small RTE and SST-2 files in the official layout."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choices(GLUE_WORDS, k=6))

    for split, rows in (("train", 40), ("dev", 16)):
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        labels = ("entailment", "not_entailment")
        lines = ["index\tsentence1\tsentence2\tlabel"] + [
            f"{i}\t{sentence()}\t{sentence()}\t{rng.choice(labels)}" for i in range(rows)]
        (root / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        (root / "SST-2").mkdir(parents=True, exist_ok=True)
        lines = ["sentence\tlabel"] + [f"{sentence()} \t{rng.randint(0, 1)}" for _ in range(rows)]
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def _one_blas_thread() -> None:
    """One process a core: BLAS threads of their own would oversubscribe the cores."""
    import numpy  # noqa: F401  (these load the BLAS libraries the limit applies to)
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # for the process's life


def on_every_core(function: Callable, items: Iterable) -> list:
    """`function` of each item, spread over this machine's cores: for the independent seeded
    studies of a coverage test. Spawned, as the pytest process may hold Ray's threads;
    `function` is a module-level function of a test module."""
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_blas_thread) as pool:
        return list(pool.map(function, items))
