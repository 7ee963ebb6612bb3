"""A CPU plan's calibration: this machine's training speed of a size, in FLOP/s."""

from crammit.config import model_config, recipe_config
from crammit.model.flops import training_flops_per_token
from crammit.study.calibrate import calibrate


def test_calibration_times_each_size_with_the_threads_a_trial_gets():
    recipe = recipe_config("crammed", batch_size=32, micro_batch_size=8)
    models = {("s", "tiny"): (model_config("tiny"), recipe), ("s", "mini"): (model_config("mini"), recipe)}
    rates = calibrate(models, threads=1, seconds=2.0)
    assert set(rates) == set(models)
    tokens_per_s = {key: rate / training_flops_per_token(models[key][0], recipe.mask_rate)
                    for key, rate in rates.items()}
    # A smaller model trains more tokens a second; both at CPU rates (hundreds to ~100k a second).
    assert tokens_per_s[("s", "tiny")] > tokens_per_s[("s", "mini")] > 100
    assert tokens_per_s[("s", "tiny")] < 1e6


def test_concurrent_calibration_bounds_the_micro_batch_it_times():
    """A micro-batch of 65,536 sequences would need tens of GiB a process; the trial itself
    reports that its training set holds fewer, so the plan times a bounded one."""
    recipe = recipe_config("crammed", batch_size=65536, micro_batch_size=65536)
    models = {("broken", "tiny"): (model_config("tiny"), recipe)}
    rates = calibrate(models, threads=1, seconds=1.0, concurrent=2)
    assert 0 < rates[("broken", "tiny")] < float("inf")
