"""Analytic parameter count, training FLOPs per token and MFU, for the crammed BERT and
the original BERT (`Arch.BERT`).

The scaling study measures compute with these, so tests check them against the model
(`num_parameters`) and against torch's FLOP counter.
"""

from __future__ import annotations

import re

from crammit.config import Arch, ModelConfig

# Dense bf16 tensor-core peaks (FLOP/s) of the accelerators we know; MFU is reported only
# for these, never guessed for others.
PEAK_FLOPS_BF16: dict[str, float] = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 125e12,
}


ORIGINAL_BERT_TOKEN_TYPES = 2  # segment A and B embeddings


def parameter_count(config: ModelConfig) -> int:
    """Every parameter: embeddings, blocks, norms (weight and bias), position scale; for
    the original BERT also biases, learned positions and token types, and the MLM head's
    transform and decoder bias (its decoder weight is the tied embedding)."""
    if config.arch is Arch.BERT:
        return _original_bert_parameter_count(config)
    h, i = config.hidden_size, config.intermediate_size
    layer_norm = 2 * h
    block = 4 * h * h + h * i + (i // 2) * h + 2 * layer_norm
    embeddings = config.vocab_size * h + 1 + layer_norm
    return embeddings + config.num_layers * block + layer_norm


def _original_bert_parameter_count(config: ModelConfig) -> int:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    layer_norm = 2 * h
    embeddings = (v + config.seq_len + ORIGINAL_BERT_TOKEN_TYPES) * h + layer_norm
    block = (4 * h * h + 4 * h) + (2 * h * i + i + h) + 2 * layer_norm
    head = h * h + h + layer_norm + v
    return embeddings + config.num_layers * block + head


def non_embedding_parameter_count(config: ModelConfig) -> int:
    """Parameters outside the token embedding: the N of scaling laws."""
    return parameter_count(config) - config.vocab_size * config.hidden_size


def training_flops_per_token(config: ModelConfig, mask_rate: float) -> float:
    """Forward+backward matmul FLOPs per input token (backward = 2x forward).

    Counts the projections, the attention scores and weighted sum, and the decoder: the
    crammed BERT's is sparse, on a `mask_rate` fraction of the tokens; the original BERT
    runs its head's dense transform and its decoder on every token. Norms, biases and
    softmax are left out.
    """
    h, i, s = config.hidden_size, config.intermediate_size, config.seq_len
    attention = 2 * 2 * s * h  # q·kᵀ and attention·v, per query token
    if config.arch is Arch.BERT:
        projections = 2 * (4 * h * h + 2 * h * i)
        head = 2 * h * h + 2 * h * config.vocab_size
    else:
        projections = 2 * (3 * h * h + h * h + h * i + (i // 2) * h)
        head = 2 * h * config.vocab_size * mask_rate
    return 3 * (config.num_layers * (projections + attention) + head)


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a known accelerator, matched by its model word in the device name
    ("NVIDIA A100-SXM4-80GB" is an A100; "NVIDIA L40S" is not an L4); None when unknown."""
    words = re.split(r"[\s-]+", device_name.upper())
    return next((peak for name, peak in PEAK_FLOPS_BF16.items() if name in words), None)


def model_flops_utilization(flops_per_s: float, peak_per_device: float | None, devices: int) -> float | None:
    """Achieved over peak FLOP/s; None where the peak is unknown (CPUs)."""
    if peak_per_device is None:
        return None
    return flops_per_s / (peak_per_device * devices)
