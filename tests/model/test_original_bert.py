"""The original BERT arm: Hugging Face's BertForMaskedLM at the named sizes, counted."""

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertForMaskedLM

from crammit.config import Arch, model_config
from crammit.errors import CrammitError
from crammit.model.bert import IGNORE_INDEX
from crammit.model.build import build_model
from crammit.model.flops import parameter_count, training_flops_per_token
from crammit.model.original_bert import OriginalBert

MASK_RATE = 0.15


@pytest.mark.parametrize("size", ["tiny", "mini", "small", "base"])
def test_every_size_builds_with_the_analytic_parameter_count(size):
    config = model_config(size, "bert")
    model = build_model(config)
    assert isinstance(model, OriginalBert) and isinstance(model.hf, BertForMaskedLM)
    assert model.num_parameters() == parameter_count(config)
    hf = model.hf.config
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size) == (
        config.num_layers, config.hidden_size, config.num_heads, config.intermediate_size)
    assert hf.hidden_dropout_prob == hf.attention_probs_dropout_prob == 0.1


@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_flops_per_token_match_a_counted_training_step(size):
    config = model_config(size, "bert")
    model = build_model(config)
    input_ids = torch.randint(config.vocab_size, (2, config.seq_len))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, ::7] = input_ids[:, ::7]  # which positions are masked does not change the dense decoder's cost
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(input_ids, labels).backward()
    counted = counter.get_total_flops() / input_ids.numel()
    assert training_flops_per_token(config, MASK_RATE) == pytest.approx(counted, rel=0.05)
    crammed = model_config(size)
    assert training_flops_per_token(config, MASK_RATE) > training_flops_per_token(crammed, MASK_RATE)


def test_loss_counts_only_masked_positions_and_matches_hugging_face():
    config = dataclasses.replace(model_config("tiny", "bert"), dropout=0.0)
    model = build_model(config).eval()
    input_ids = torch.randint(config.vocab_size, (2, 32))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 3:9] = input_ids[:, 3:9]
    summed = model(input_ids, labels)
    mean = model.hf(input_ids=input_ids, labels=labels).loss  # HF's own masked-LM loss, a mean
    assert summed.item() == pytest.approx(mean.item() * 12, rel=1e-5)


def test_the_crammed_arch_has_no_dropout_to_set():
    with pytest.raises(CrammitError, match="no dropout"):
        dataclasses.replace(model_config("tiny"), dropout=0.1)
    with pytest.raises(CrammitError, match="unknown arch 'gpt'"):
        model_config("tiny", "gpt")
    assert model_config("tiny", "bert").arch is Arch.BERT
