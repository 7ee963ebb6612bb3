"""The model a ModelConfig describes, by its arch."""

from __future__ import annotations

from torch import nn

from crammit.config import Arch, ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
    """A crammed BERT or the original BERT, both with `forward(input_ids, labels)` (summed
    masked-token cross-entropy), `encode(input_ids, padding_mask)` and `compile_blocks()`."""
    if config.arch is Arch.BERT:
        from crammit.model.original_bert import OriginalBert  # transformers is slow to import

        return OriginalBert(config)
    from crammit.model.bert import CrammedBert

    return CrammedBert(config)
