"""The original BERT (Devlin et al. 2019) as the baseline arm: Hugging Face's
`BertForMaskedLM` itself, behind the interface the trainer and fine-tuning use.

Post-LayerNorm blocks with biases, learned absolute positions and token types, a GELU FFN,
an MLM head with its dense + GELU + LayerNorm transform and decoder bias, decoding every
position (the loss counts the masked ones), dropout as configured (0.1 by default).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from crammit.config import ModelConfig
from crammit.model.bert import IGNORE_INDEX


def hf_config(config: ModelConfig) -> BertConfig:
    """BERT's configuration at the named size's shape; the FFN is `intermediate_size` wide."""
    return BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.seq_len, layer_norm_eps=config.norm_eps,
        initializer_range=config.init_std, hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout, attn_implementation="sdpa",
    )


class OriginalBert(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.hf = BertForMaskedLM(hf_config(config))

    def encode(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (batch, seq, hidden); padding_mask is True at real tokens."""
        return self.hf.bert(input_ids=input_ids, attention_mask=padding_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The summed cross-entropy over masked positions (callers normalise), with the
        decoder run on every position as BERT does."""
        logits = self.hf(input_ids=input_ids).logits
        predicted = labels != IGNORE_INDEX
        return F.cross_entropy(logits[predicted].float(), labels[predicted], reduction="sum")

    def compile_blocks(self) -> None:
        self.hf.bert.encoder.compile()

    def num_parameters(self) -> int:
        """Distinct parameters (the tied decoder weight counts once)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: Path) -> None:
        """The Hugging Face layout: `BertForMaskedLM.from_pretrained(directory)` loads it.
        Tensors are cloned: ZeRO keeps parameters as views into flat buffers."""
        weights = {name: tensor.detach().cpu().clone() for name, tensor in self.hf.state_dict().items()}
        self.hf.save_pretrained(directory, state_dict=weights)
