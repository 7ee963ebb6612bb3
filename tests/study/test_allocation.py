"""The compute-optimal allocation under the trials' own FLOPs per token."""

from __future__ import annotations

import numpy as np
import pytest

from crammit.study.allocation import FlopsPerToken, compute_optimal
from crammit.study.laws import Identification, LawFit
from tests.study.test_laws import PARAMS_TOKENS, params_tokens_loss

KNOWN_LAW = LawFit(("E", "A", "B", "alpha", "beta"), np.array(list(PARAMS_TOKENS.values())), np.empty((0, 5)),
                   (Identification(True),) * 5, 0.95, 0.0, 0, 0, np.zeros(3), 1.0)


@pytest.mark.parametrize("per_token", [
    FlopsPerToken.from_trials([1e6, 1e7, 1e8], [1.0] * 3, [6e6, 6e7, 6e8]),  # C = 6·N·D
    FlopsPerToken.from_trials([2e6, 4.7e6, 1.5e7], [1.0] * 3, [8.7e6, 2.05e7, 7.4e7]),  # the smoke c(N)
])
def test_the_allocation_minimises_loss_at_fixed_compute(per_token):
    budgets = np.array([1e12, 1e17, 1e21])
    optimal = compute_optimal(KNOWN_LAW, budgets, per_token)
    for i, flops in enumerate(budgets):
        params = np.geomspace(1e2, 1e15, 400_001)
        loss = params_tokens_loss(params, flops / per_token(params))
        best = loss.argmin()
        assert optimal["params"].estimate[i] == pytest.approx(params[best], rel=1e-3)
        assert optimal["tokens"].estimate[i] == pytest.approx(flops / per_token(params[best]), rel=1e-3)
        assert optimal["loss"].estimate[i] == pytest.approx(loss[best], rel=1e-9)


def test_flops_per_token_passes_through_every_trial_and_is_6n_without_flops():
    params, tokens = np.array([2.0e6, 2.0e6, 4.7e6, 1.5e7]), np.array([1e5, 3e5, 5e4, 2e4])
    flops = tokens * np.array([8.7e6, 8.7e6, 2.05e7, 7.4e7])
    per_token = FlopsPerToken.from_trials(params, tokens, flops)
    np.testing.assert_allclose(per_token(params) * tokens, flops)
    six = FlopsPerToken.from_trials(params, tokens, 6 * params * tokens)
    np.testing.assert_allclose(six(np.array([1e3, 1e9, 1e12])), 6 * np.array([1e3, 1e9, 1e12]))
