"""A pretrained encoder (either arch) with a sequence-level head, for fine-tuning on GLUE.

The head reads the first token's state (`[CLS]`): a dense layer with tanh (BERT's
"pooler"), then a linear layer to the task's labels, one output for a regression.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crammit.config import ModelConfig


class ClassifierHead(nn.Module):
    """Logits from an encoder's hidden states; shared with the Hugging Face export
    (`crammit.model.hf`), so a fine-tune there starts from the same head."""

    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, num_labels)
        for layer in (self.pooler, self.out):
            nn.init.normal_(layer.weight, std=config.init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels) of hidden states (batch, seq, hidden)."""
        return self.out(torch.tanh(self.pooler(hidden[:, 0])))


class SequenceClassifier(nn.Module):
    """`encoder` (a `build_model` result) under a `ClassifierHead`; the encoder is passed in,
    so this module, copied into exports, does not pull in the original BERT."""

    def __init__(self, encoder: nn.Module, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.bert = encoder
        self.head = ClassifierHead(config, num_labels)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels); padding_mask is True at real tokens."""
        return self.head(self.bert.encode(input_ids, padding_mask))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Mean squared error of the one output for a regression, cross-entropy otherwise."""
    if regression:
        return F.mse_loss(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels)
