"""Fine-tune one model on one GLUE task with one seed, and score it on the dev sets.

A fine-tune is small (batch 16, one device), so it is a plain PyTorch loop: the grid of
fine-tunes, not any one of them, is what is spread over the cluster (`crammit.eval.glue`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from crammit.config import GlueRecipe, ModelConfig
from crammit.data.tokenizer import SpecialIds
from crammit.eval.glue_data import GlueSplit, GlueTask, score_name
from crammit.eval.metrics import score
from crammit.model.build import build_model
from crammit.model.classifier import SequenceClassifier, classification_loss

EVAL_BATCH_SIZE = 128  # dev sets are scored in larger batches: no gradients to hold


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of a split's examples, ragged: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, indices: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids padded to the batch's longest example, the padding mask (True at real
        tokens) and the labels."""
        lengths = self.lengths()[indices]
        input_ids = np.full((len(indices), lengths.max()), pad_id, dtype=np.int64)
        for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
            input_ids[row, :length] = self.ids[self.offsets[index]:self.offsets[index] + length]
        padding_mask = np.arange(lengths.max())[None, :] < lengths[:, None]
        labels = torch.from_numpy(self.labels[indices])
        return torch.from_numpy(input_ids), torch.from_numpy(padding_mask), labels


def encode(tokenizer: Tokenizer, split: GlueSplit, seq_len: int) -> EncodedSplit:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (the run's tokenizer adds them), pairs
    truncated longest-first to `seq_len` tokens."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # truncation is state: keep the caller's as it was
    tokenizer.enable_truncation(max_length=seq_len)
    inputs = split.text_a if split.text_b is None else list(zip(split.text_a, split.text_b, strict=True))
    encodings = tokenizer.encode_batch(inputs)
    lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter((token for encoding in encodings for token in encoding.ids), dtype=np.int32,
                      count=int(lengths.sum()))
    return EncodedSplit(ids, np.concatenate([[0], np.cumsum(lengths)]), split.labels)


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over the first `warmup_fraction` of the steps,
    then cosine decay to zero at the last."""
    warmup = math.ceil(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))


def finetune(model_config: ModelConfig, weights: dict[str, torch.Tensor] | None, task: GlueTask,
             data: dict[str, EncodedSplit], pad_id: int, recipe: GlueRecipe, seed: int,
             device: torch.device, report: Callable[[dict], None] = lambda metrics: None) -> dict[str, float]:
    """Fine-tune `weights` (None: a random initialisation, the from-scratch control) on
    `data["train"]` and return the dev scores, as fractions, named by `glue_data.score_names`.
    `report` receives each epoch's mean training loss."""
    torch.manual_seed(seed)
    model = SequenceClassifier(build_model(model_config), model_config, task.num_labels)
    if weights is not None:
        model.bert.load_state_dict(weights)
    model.to(device)
    train = data["train"]
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.adam_eps,
                                  weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, recipe.warmup_fraction))
    order = np.random.default_rng(seed)
    for epoch in range(recipe.epochs):
        model.train()
        losses = []
        permutation = order.permutation(len(train))
        for start in range(0, len(train), recipe.batch_size):
            batch = permutation[start:start + recipe.batch_size]
            input_ids, padding_mask, labels = train.batch(batch, pad_id)
            with _autocast(device):
                logits = model(input_ids.to(device), padding_mask.to(device))
            loss = classification_loss(logits.float(), labels.to(device), task.is_regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        report({"epoch": epoch + 1, "train_loss": float(np.mean(losses))})
    scores = {}
    for split in task.dev_splits:
        predictions = predict(model, task, data[split.name], pad_id, device)
        for metric in task.metrics:
            scores[score_name(task, split.name, metric)] = score(metric, predictions, data[split.name].labels)
    return scores


@torch.no_grad()
def predict(model: SequenceClassifier, task: GlueTask, split: EncodedSplit, pad_id: int,
            device: torch.device) -> np.ndarray:
    """Class ids (or scores, for a regression) for every example, in the split's order;
    batched by length, so little of each batch is padding."""
    model.eval()
    by_length = np.argsort(split.lengths(), kind="stable")
    predictions = np.empty(len(split), dtype=np.float32 if task.is_regression else np.int64)
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        indices = by_length[start:start + EVAL_BATCH_SIZE]
        input_ids, padding_mask, _ = split.batch(indices, pad_id)
        with _autocast(device):
            logits = model(input_ids.to(device), padding_mask.to(device)).float()
        predictions[indices] = (logits[:, 0] if task.is_regression else logits.argmax(-1)).cpu().numpy()
    return predictions


def padding_id(tokenizer: Tokenizer) -> int:
    return SpecialIds.of(tokenizer).pad


def _autocast(device: torch.device):
    """bf16 on GPUs; fp32 on CPUs, where bf16 matmuls are far slower."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
