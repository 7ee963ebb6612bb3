import pytest
import torch

from crammit.config import MODEL_SIZES, RECIPES, Budget, RecipeConfig, recipe_config
from crammit.errors import CrammitError
from crammit.model.bert import CrammedBert
from crammit.train.recipe import accumulation_steps, learning_rate, parameter_groups

PAPER = RecipeConfig()
BERT = RECIPES["bert"]


def test_learning_rate_is_the_papers_triangle():
    assert learning_rate(PAPER, 0.0) == pytest.approx(0.25e-3)
    assert learning_rate(PAPER, 0.5) == pytest.approx(0.75e-3)
    assert learning_rate(PAPER, 0.75) == pytest.approx(1e-3)
    assert learning_rate(PAPER, 0.875) == pytest.approx(0.5e-3)
    assert learning_rate(PAPER, 1.0) == 0.0
    curve = [learning_rate(PAPER, p / 100) for p in range(101)]
    peak = curve.index(max(curve))
    assert curve[: peak + 1] == sorted(curve[: peak + 1])
    assert curve[peak:] == sorted(curve[peak:], reverse=True)


def test_batch_ramp_reaches_the_target_at_sixty_percent():
    # 8192 sequences of 128 per micro-batch on one GPU: 64 micro-batches at the end.
    assert accumulation_steps(PAPER, 1, 0.0) == 1
    assert accumulation_steps(PAPER, 1, 0.3) == 32
    assert accumulation_steps(PAPER, 1, 0.6) == 64
    assert accumulation_steps(PAPER, 1, 0.95) == 64
    assert accumulation_steps(PAPER, 8, 0.6) == 8  # eight workers share the batch
    ramp = [accumulation_steps(PAPER, 1, p / 100) for p in range(101)]
    assert ramp == sorted(ramp)


def test_bert_recipe_warms_up_over_one_percent_then_decays_linearly_at_a_constant_batch():
    assert (BERT.peak_lr, BERT.betas, BERT.adam_eps, BERT.weight_decay, BERT.grad_clip, BERT.mask_rate) == (
        1e-4, (0.9, 0.999), 1e-6, 0.01, 1.0, 0.15)
    assert learning_rate(BERT, 0.0) == 0.0
    assert learning_rate(BERT, 0.005) == pytest.approx(0.5e-4)
    assert learning_rate(BERT, 0.01) == pytest.approx(1e-4)
    assert learning_rate(BERT, 0.505) == pytest.approx(0.5e-4)
    assert learning_rate(BERT, 1.0) == 0.0
    assert {accumulation_steps(BERT, 1, p / 100) for p in range(101)} == {2}  # 256 = 2 x 128, from the start
    assert recipe_config("bert", batch_size=64).peak_lr == 1e-4
    with pytest.raises(CrammitError, match="unknown recipe 'adam'"):
        recipe_config("adam")


@pytest.mark.parametrize("recipe", [PAPER, BERT], ids=["crammed", "bert"])
def test_schedules_depend_only_on_progress_not_on_the_budget_size(recipe):
    """A 6 h run and a 24 h run at the same fraction of their budgets are in the same state."""
    short, long = Budget.hours(6), Budget.hours(24)
    for fraction in (0.005, 0.1, 0.5, 0.9):
        p_short = short.progress(elapsed_s=fraction * 6 * 3600, tokens=0, flops=0)
        p_long = long.progress(elapsed_s=fraction * 24 * 3600, tokens=123, flops=456)
        assert p_short == pytest.approx(p_long)
        assert learning_rate(recipe, p_short) == pytest.approx(learning_rate(recipe, p_long))
        assert accumulation_steps(recipe, 1, p_short) == accumulation_steps(recipe, 1, p_long)


def test_budget_progress_in_each_unit():
    assert Budget.tokens(1000).progress(elapsed_s=1e9, tokens=250, flops=0) == 0.25
    assert Budget.flops(1e18).progress(elapsed_s=0, tokens=0, flops=5e17) == 0.5
    assert Budget.hours(1).progress(elapsed_s=7200, tokens=0, flops=0) == 1.0
    with pytest.raises(CrammitError, match="positive"):
        Budget.hours(0)


def test_batch_size_must_split_into_micro_batches():
    with pytest.raises(CrammitError, match="multiple of micro-batch"):
        accumulation_steps(RecipeConfig(batch_size=100, micro_batch_size=64), 1, 0.5)


def test_no_weight_decay_on_norms_and_scalars():
    model = CrammedBert(MODEL_SIZES["tiny"])
    decay, no_decay = parameter_groups(model, 0.01)
    assert no_decay["weight_decay"] == 0.0
    # Every parameter is in exactly one group.
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert norm_weights <= {id(p) for p in no_decay["params"]}
    assert id(model.embeddings.positions.scale) in {id(p) for p in no_decay["params"]}
    assert id(model.embeddings.tokens.weight) in {id(p) for p in decay["params"]}
