"""A pretrained encoder (either arch) with a sequence-level head, for fine-tuning on GLUE.

The head reads the first token's state (`[CLS]`): a dense layer with tanh (BERT's
"pooler"), then a linear layer to the task's labels, one output for a regression.
"""

from __future__ import annotations

import torch
from torch import nn

from crammit.config import ModelConfig
from crammit.model.build import build_model


class SequenceClassifier(nn.Module):
    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.bert = build_model(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, num_labels)
        for layer in (self.pooler, self.head):
            nn.init.normal_(layer.weight, std=config.init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels); padding_mask is True at real tokens."""
        first = self.bert.encode(input_ids, padding_mask)[:, 0]
        return self.head(torch.tanh(self.pooler(first)))
