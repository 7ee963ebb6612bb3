"""The crammed BERT in Hugging Face's classes: the model classes an export's `auto_map` names.

`crammit.model.hf_export` copies this module (as `modeling_crammed_bert.py`) and the crammit
modules it imports into every export, so `transformers` loads the model with
`trust_remote_code=True` where crammit is not installed, running crammit's own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput

from crammit.config import ModelConfig
from crammit.model.bert import IGNORE_INDEX, CrammedBert, ScaledSinusoidalPositions
from crammit.model.classifier import ClassifierHead, classification_loss
from crammit.model.hf_config import BASE_MODEL_PREFIX, MODEL_TYPE, SHAPE_FIELDS


class CrammedBertConfig(PretrainedConfig):
    """A ModelConfig's shape under crammit's names; BERT's names (`num_hidden_layers`, ...)
    read and write the same values, as tools expect them."""

    model_type = MODEL_TYPE
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                     "max_position_embeddings": "seq_len", "layer_norm_eps": "norm_eps",
                     "initializer_range": "init_std"}

    def __init__(self, **kwargs) -> None:
        defaults = ModelConfig()
        for name in SHAPE_FIELDS:  # before the base class, which applies BERT's names in kwargs
            setattr(self, name, kwargs.pop(name, getattr(defaults, name)))
        super().__init__(**kwargs)

    @classmethod
    def of(cls, config: ModelConfig, **kwargs) -> CrammedBertConfig:
        return cls(**{name: getattr(config, name) for name in SHAPE_FIELDS}, **kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in SHAPE_FIELDS})


class CrammedBertPreTrainedModel(PreTrainedModel):
    config_class = CrammedBertConfig
    base_model_prefix = BASE_MODEL_PREFIX

    def _init_weights(self, module: nn.Module) -> None:
        """crammit's initialisation (Hugging Face's default: normal(init_std) linears and
        embeddings, zero biases, unit norms), plus the sinusoid positions, which the loader
        builds on the meta device and never reads from the checkpoint."""
        super()._init_weights(module)
        if isinstance(module, ScaledSinusoidalPositions):
            module.reset_parameters()


def _padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask.bool()


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.bert = CrammedBert(config.model_config())
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> MaskedLMOutput:
        """Logits at every position, and the mean cross-entropy over labelled ones.
        `token_type_ids` is accepted and ignored: the crammed BERT has no segment embedding
        (a pair is told apart by its `[SEP]`), and BERT-style tokenizers send them."""
        logits = self.bert.decode(self.bert.encode(input_ids, _padding_mask(attention_mask)))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                            ignore_index=IGNORE_INDEX)
        return MaskedLMOutput(loss=loss, logits=logits)


class CrammedBertForSequenceClassification(CrammedBertPreTrainedModel):
    """crammit's GLUE model (`SequenceClassifier`): the encoder under crammit's `ClassifierHead`;
    `num_labels=1` is a regression."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        model_config = config.model_config()
        self.bert = CrammedBert(model_config)
        self.head = ClassifierHead(model_config, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """Logits (batch, num_labels), and the loss crammit fine-tunes with; `token_type_ids`
        is ignored, as in `CrammedBertForMaskedLM`."""
        logits = self.head(self.bert.encode(input_ids, _padding_mask(attention_mask)))
        regression = self.config.num_labels == 1
        loss = None if labels is None else classification_loss(logits.float(), labels, regression)
        return SequenceClassifierOutput(loss=loss, logits=logits)
