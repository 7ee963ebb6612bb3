"""An export's `config.json`: the names `transformers` finds the crammed BERT by, and a
ModelConfig's shape under crammit's names. Free of transformers, so a run writes its export
without importing it; `crammit.model.hf` reads the same names back."""

from __future__ import annotations

import dataclasses
from typing import Any

from crammit.config import ModelConfig

MODEL_TYPE = "crammed_bert"
BASE_MODEL_PREFIX = "bert"  # both heads keep the encoder under `bert.`: one checkpoint loads into either
WRAPPER_FILE = "modeling_crammed_bert"  # Hugging Face's name for a model's remote code
AUTO_CLASSES = {
    "AutoConfig": "CrammedBertConfig",
    "AutoModelForMaskedLM": "CrammedBertForMaskedLM",
    "AutoModelForSequenceClassification": "CrammedBertForSequenceClassification",
}
# A ModelConfig's shape; the arch is always the crammed one, which has no dropout.
SHAPE_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig)
                     if field.name not in {"arch", "dropout"})


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """`config.json` of an fp32 export of a model of `config`'s shape, as `save_pretrained`
    writes it."""
    return {
        "architectures": [AUTO_CLASSES["AutoModelForMaskedLM"]],
        "auto_map": {auto_class: f"{WRAPPER_FILE}.{name}" for auto_class, name in AUTO_CLASSES.items()},
        "model_type": MODEL_TYPE, "dtype": "float32",
        **{name: getattr(config, name) for name in SHAPE_FIELDS},
    }
