from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau, rankdata

from fms_lightning.bench.metrics import easiness, kendall_tau, regret_curve, unobserved_fill
from fms_lightning.errors import ConfigurationError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_matches_scipy_on_rank_vectors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=30)
    pred = true + rng.normal(scale=0.7, size=30)
    expected = kendalltau(rankdata(pred), rankdata(true)).statistic
    assert kendall_tau(pred, true) == pytest.approx(expected)
    assert -1.0 <= kendall_tau(pred, true) <= 1.0


def test_kendall_tau_is_not_computed_on_sorted_index_lists() -> None:
    # Items 0..3; the prediction ranks them perfectly although the argsort lists look unrelated.
    true = np.array([0.9, 0.1, 0.5, 0.3])
    pred = true * 10 + 1
    assert kendall_tau(pred, true) == pytest.approx(1.0)
    reversed_pred = -pred
    assert kendall_tau(reversed_pred, true) == pytest.approx(-1.0)
    # The buggy variant (comparing argsort position lists) gives another value here.
    buggy = kendalltau(np.argsort(-pred), np.argsort(true)).statistic
    assert buggy != pytest.approx(kendall_tau(reversed_pred, true))


def test_kendall_tau_constant_and_bad_input() -> None:
    assert kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    with pytest.raises(ConfigurationError, match="equal 1-d"):
        kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0])


def test_unobserved_configs_tie_below_observed() -> None:
    scores = unobserved_fill([0.5, None, 0.7, None])
    assert scores[1] == scores[3] < 0.5
    assert kendall_tau(scores, [0.5, 0.0, 0.7, 0.1]) > 0.5


def test_regret_curve_non_increasing_and_validated() -> None:
    r = regret_curve([0.2, 0.5, 0.4, 0.9, 0.1], best_possible=1.0)
    np.testing.assert_allclose(r, [0.8, 0.5, 0.5, 0.1, 0.1])
    assert np.all(np.diff(r) <= 0)
    with pytest.raises(ConfigurationError, match="best_possible"):
        regret_curve([1.5], best_possible=1.0)


def test_easiness_fractions() -> None:
    curves = np.array([[0.50, 0.900], [0.60, 0.995], [0.70, 0.800], [0.999, 0.20], [0.4, 0.991]])
    e = easiness(curves)
    assert e.y_star == 0.999 and e.best_final == 0.995 and e.n_configs == 5
    assert e.final_near_y_star == pytest.approx(2 / 5)  # 0.995 and 0.991 are within 0.01 of 0.999
    assert e.any_epoch_near_y_star == pytest.approx(3 / 5)
    assert e.final_near_best_final == pytest.approx(2 / 5)
    assert e.draws_for_half == 2.0  # 1 - 0.6**2 = 0.64 >= 0.5 > 0.4
    assert easiness(curves, tol=0.2).final_near_best_final == pytest.approx(4 / 5)
    assert easiness([[1.0, 0.2], [0.5, 0.3]]).draws_for_half == float("inf")  # y* only mid-curve
    assert easiness([[0.5, 0.5], [0.5, 0.5]]).draws_for_half == 1.0


def test_easiness_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError, match="n_configs, E"):
        easiness([0.1, 0.2])
    with pytest.raises(ConfigurationError, match="tol"):
        easiness([[0.1, 0.2]], tol=-1)
