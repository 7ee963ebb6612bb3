import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from crammit.config import MODEL_SIZES
from crammit.model.bert import IGNORE_INDEX, CrammedBert
from crammit.model.flops import (
    model_flops_utilization,
    non_embedding_parameter_count,
    peak_flops,
    training_flops_per_token,
)

MASK_RATE = 0.25


@pytest.mark.parametrize("size", ["tiny", "mini", "small"])
def test_flops_per_token_matches_a_counted_training_step(size):
    config = MODEL_SIZES[size]
    model = CrammedBert(config)
    batch = 2
    input_ids = torch.randint(config.vocab_size, (batch, config.seq_len))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :: int(1 / MASK_RATE)] = input_ids[:, :: int(1 / MASK_RATE)]  # exactly 25 % masked
    # The math backend spells attention as matmuls, which the counter sees on CPU.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(input_ids, labels).backward()
    counted = counter.get_total_flops() / input_ids.numel()
    assert training_flops_per_token(config, MASK_RATE) == pytest.approx(counted, rel=0.05)


def test_flops_grow_with_size_and_are_about_six_per_parameter():
    sizes = list(MODEL_SIZES.values())
    flops = [training_flops_per_token(config, MASK_RATE) for config in sizes]
    assert flops == sorted(flops)
    crammed = MODEL_SIZES["crammed"]
    ratio = training_flops_per_token(crammed, MASK_RATE) / non_embedding_parameter_count(crammed)
    assert 6 < ratio < 8  # 6N plus attention and the sparse decoder


def test_mfu_only_where_the_peak_is_known():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA L40S") is None  # not an L4
    assert peak_flops("cpu") is None
    assert model_flops_utilization(1e12, None, 1) is None
    assert model_flops_utilization(494.5e12, 989e12, 2) == pytest.approx(0.25)
