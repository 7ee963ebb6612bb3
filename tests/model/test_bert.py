import pytest
import torch
import torch.nn.functional as F

from crammit.config import MODEL_SIZES, ModelConfig
from crammit.model.bert import IGNORE_INDEX, CrammedBert
from crammit.model.flops import parameter_count


def random_mlm_batch(config: ModelConfig, batch: int, seed: int = 0, mask_rate: float = 0.25):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(config.vocab_size, (batch, config.seq_len), generator=generator)
    masked = torch.rand(input_ids.shape, generator=generator) < mask_rate
    targets = torch.randint(config.vocab_size, input_ids.shape, generator=generator)
    return input_ids, torch.where(masked, targets, IGNORE_INDEX)


@pytest.mark.parametrize("size", MODEL_SIZES)
def test_every_size_builds_with_the_analytic_parameter_count(size):
    config = MODEL_SIZES[size]
    with torch.device("meta"):  # shapes only: `large` would take seconds to initialise
        model = CrammedBert(config)
    assert model.num_parameters() == parameter_count(config)


@pytest.mark.parametrize("size", MODEL_SIZES)
def test_forward_backward_reaches_every_parameter(size):
    """Every size, on two sequences of 16 tokens (enough to run every layer of `large` on a CPU)."""
    config = MODEL_SIZES[size]
    torch.manual_seed(0)
    model = CrammedBert(config)
    input_ids, labels = random_mlm_batch(config, batch=2, mask_rate=0.5)
    input_ids, labels = input_ids[:, :16], labels[:, :16]
    loss = model(input_ids, labels) / (labels != IGNORE_INDEX).sum()
    loss.backward()
    # At initialisation the loss is near uniform guessing over the vocabulary.
    assert abs(loss.item() - torch.log(torch.tensor(config.vocab_size)).item()) < 0.5
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in model.parameters())


def test_the_gated_ffn_scales_the_value_half_by_gelu_of_the_gate_half():
    config = MODEL_SIZES["tiny"]
    torch.manual_seed(0)
    ffn = CrammedBert(config).encoder.blocks[0].ffn
    x = torch.randn(3, config.hidden_size)
    gate_weight, value_weight = ffn.up.weight.chunk(2, dim=0)
    expected = (F.gelu(x @ gate_weight.T) * (x @ value_weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected)


def test_architecture_matches_the_paper():
    model = CrammedBert(MODEL_SIZES["crammed"])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None for m in linears)
    assert len(model.encoder.blocks) == 16
    ffn = model.encoder.blocks[0].ffn
    assert (ffn.up.out_features, ffn.down.in_features) == (3072, 1536)
    assert model.embeddings.positions.scale.item() == pytest.approx(768 ** -0.5)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_sparse_prediction_equals_dense_masked_cross_entropy():
    config = MODEL_SIZES["tiny"]
    torch.manual_seed(0)
    model = CrammedBert(config).double()
    input_ids, labels = random_mlm_batch(config, batch=4, seed=1)
    sparse = model(input_ids, labels) / (labels != IGNORE_INDEX).sum()
    dense_logits = model.encode(input_ids) @ model.embeddings.tokens.weight.T
    dense = F.cross_entropy(dense_logits.view(-1, config.vocab_size), labels.view(-1),
                            ignore_index=IGNORE_INDEX)
    assert sparse.item() == pytest.approx(dense.item(), abs=1e-5)


def test_decoder_is_tied_to_the_token_embedding():
    config = MODEL_SIZES["tiny"]
    model = CrammedBert(config)
    input_ids, labels = random_mlm_batch(config, batch=1)
    model(input_ids, labels).backward()
    # The embedding gets gradient from decoding rows of tokens never seen in the input.
    unseen = torch.ones(config.vocab_size, dtype=torch.bool)
    unseen[input_ids.unique()] = False
    assert model.embeddings.tokens.weight.grad[unseen].abs().sum() > 0


def test_padding_mask_hides_padded_keys():
    config = MODEL_SIZES["tiny"]
    torch.manual_seed(0)
    model = CrammedBert(config).eval()
    input_ids, _ = random_mlm_batch(config, batch=1)
    padding = torch.ones_like(input_ids, dtype=torch.bool)
    padding[:, 64:] = False
    changed = input_ids.clone()
    changed[:, 64:] = 0
    with torch.no_grad():
        a = model.encode(input_ids, padding)[:, :64]
        b = model.encode(changed, padding)[:, :64]
    torch.testing.assert_close(a, b)
