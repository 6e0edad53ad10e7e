"""FMSOptimizer.predict, which the benchmark uses for Kendall's τ."""

from __future__ import annotations

import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.space import Choice, SearchSpace

SPACE = SearchSpace({"lr": Choice([0.001, 0.01, 0.1]), "momentum": Choice([0.5, 0.9])})


def _run(mode: str) -> FMSOptimizer:
    opt = FMSOptimizer(SPACE, max_epochs=3, method="dyhpo", mode=mode, seed=0, n_candidates=8,
                       initial_steps=5, refine_steps=2)
    for _ in range(5):
        s = opt.suggest()
        value = s.config["lr"] * 5 + 0.1 * s.epoch
        opt.observe(s.trial_id, s.epoch, value if mode == "max" else -value)
    return opt


@pytest.mark.parametrize("mode", ["max", "min"])
def test_predict_every_config(mode: str) -> None:
    opt = _run(mode)
    configs = [{"lr": lr, "momentum": m} for lr in (0.001, 0.01, 0.1) for m in (0.5, 0.9)]
    mean, std = opt.predict(configs)
    assert mean.shape == std.shape == (6,)
    assert torch.isfinite(mean).all() and (std > 0).all()
    n_obs = opt.n_observations
    state = opt.suggest()  # predicting does not change what the run observes
    assert opt.n_observations == n_obs and state.epoch >= 1
    m1, _ = opt.predict(configs, epoch=1)
    assert m1.shape == (6,)


def test_predict_rejects_random_and_bad_epoch() -> None:
    with pytest.raises(ConfigurationError, match="model-based"):
        FMSOptimizer(SPACE, max_epochs=3, method="random").predict([{"lr": 0.01, "momentum": 0.5}])
    with pytest.raises(ConfigurationError, match="epoch"):
        _run("max").predict([{"lr": 0.01, "momentum": 0.5}], epoch=4)
