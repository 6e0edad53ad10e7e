from __future__ import annotations

import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.gp import Surrogate, SurrogateConfig
from fms_lightning.surrogate.stopping import LossPlateau, plateau_step
from tests.surrogate.test_gp import _data


def test_stops_on_the_first_window_whose_best_loss_barely_improved():
    # windows of 3: bests 5.0 | 2.0 (improved 3.0) | 1.99 (improved 0.01) | 1.989 (improved 0.001)
    losses = [9.0, 7.0, 5.0, 4.0, 3.0, 2.0, 2.5, 1.99, 2.2, 1.989, 3.0, 3.0]
    assert plateau_step(losses, window=3, rel_tol=0.01) == 9  # 2.0 - 1.99 = 0.01 <= 0.0199
    assert plateau_step(losses, window=3, rel_tol=0.001) == 12  # 1.99 - 1.989 = 0.001 <= 0.001989
    assert plateau_step(losses, window=3, rel_tol=0.0) is None  # every window improved a little
    assert plateau_step(losses + [3.0, 3.0, 3.0], window=3, rel_tol=0.0) == 15  # until one does not at all


def test_a_loss_that_keeps_falling_never_stops_and_the_scale_is_at_least_one():
    steady = [1.0 - 0.01 * t for t in range(200)]  # improves 0.1 per window of 10 on a scale of ~1
    assert plateau_step(steady, window=10, rel_tol=0.05) is None
    # around zero the scale is 1, not |L| (a loss crossing 0 would otherwise never stop)
    flat_near_zero = [1e-6 * (-1) ** t for t in range(40)]
    assert plateau_step(flat_near_zero, window=10, rel_tol=1e-3) == 20
    # a worse window (loss going up) counts as no improvement
    assert plateau_step([1.0] * 10 + [2.0] * 10, window=10, rel_tol=0.0) == 20


@pytest.mark.parametrize("window, rel_tol", [(0, 1e-3), (2.5, 1e-3), (10, -1.0), (10, float("nan"))])
def test_bad_settings_are_refused_with_the_values(window, rel_tol):
    with pytest.raises(ConfigurationError, match="window=.*rel_tol="):
        LossPlateau(window=window, rel_tol=rel_tol)
    with pytest.raises(ConfigurationError):
        SurrogateConfig(stop_rel_tol=rel_tol, stop_window=window)


def test_a_stopped_fit_equals_the_same_fit_capped_at_that_step():
    """Stopping reads only the loss: the model after an early stop is the model after that many steps."""
    lay, x, y = _data()
    early = Surrogate(lay, SurrogateConfig(stop_rel_tol=0.05, stop_window=5))
    early.fit(x, y, steps=400, from_scratch=True, seed=3)
    assert 10 <= early.last_fit_steps < 400
    capped = Surrogate(lay)
    capped.fit(x, y, steps=early.last_fit_steps, from_scratch=True, seed=3)
    assert capped.last_fit_steps == early.last_fit_steps
    assert early.last_fit_loss == capped.last_fit_loss
    assert torch.equal(early.predict(x[:5])[0], capped.predict(x[:5])[0])


def test_without_a_tolerance_every_step_runs():
    lay, x, y = _data()
    s = Surrogate(lay)
    s.fit(x, y, steps=40, from_scratch=True, seed=0)
    assert s.last_fit_steps == 40
