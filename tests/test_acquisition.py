from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from fms_lightning.acquisition import (
    Acquisition,
    ExpectedImprovementMF,
    HorizonExpectedImprovement,
    best_per_budget,
    ei_mf,
)
from fms_lightning.errors import ConfigurationError


def test_ei_matches_reference_values():
    mean = torch.tensor([0.5, 1.0, 0.0, 2.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=torch.float64)
    best = torch.tensor(1.0, dtype=torch.float64)
    got = ei_mf(mean, std, best)
    ref = []
    for m, s in zip(mean.tolist(), std.tolist()):
        z = (m - 1.0) / s
        ref.append(s * (z * norm.cdf(z) + norm.pdf(z)))
    assert got.tolist() == pytest.approx(ref, rel=1e-10)
    # the textbook value at z = 0: sigma / sqrt(2 pi)
    assert got[1].item() == pytest.approx(0.5 / math.sqrt(2 * math.pi))


def test_ei_zero_std_is_plain_improvement_and_non_negative():
    got = ei_mf(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert got.tolist() == [1.0, 0.0]
    far = ei_mf(torch.tensor([-50.0]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert far.item() >= 0.0


def test_ei_is_monotone_in_mean_and_std():
    m = torch.linspace(-1, 1, 11, dtype=torch.float64)
    e = ei_mf(m, torch.ones_like(m), torch.zeros_like(m))
    assert torch.all(e[1:] > e[:-1])
    s = torch.linspace(0.1, 2, 11, dtype=torch.float64)
    e = ei_mf(torch.zeros_like(s), s, torch.zeros_like(s))
    assert torch.all(e[1:] > e[:-1])


def test_best_per_budget_uses_budget_then_overall():
    ob = torch.tensor([1, 1, 2, 3])
    ov = torch.tensor([0.2, 0.4, 0.1, 0.9], dtype=torch.float64)
    got = best_per_budget(ob, ov, torch.tensor([1, 2, 3, 4, 7]))
    assert got.tolist() == [0.4, 0.1, 0.9, 0.9, 0.9]


def test_best_per_budget_requires_observations():
    with pytest.raises(ConfigurationError, match="at least one observation"):
        best_per_budget(torch.tensor([], dtype=torch.long), torch.tensor([]), torch.tensor([1]))


def test_module_uses_per_budget_incumbent():
    acq = ExpectedImprovementMF(torch.tensor([1, 2]), torch.tensor([0.0, 10.0], dtype=torch.float64))
    mean = torch.tensor([1.0, 1.0], dtype=torch.float64)
    std = torch.tensor([1e-9, 1e-9], dtype=torch.float64)
    got = acq(mean, std, torch.tensor([1, 2]))
    assert got[0].item() == pytest.approx(1.0) and got[1].item() == pytest.approx(0.0)
    assert set(dict(acq.named_buffers())) == {"observed_budgets", "observed_values"}


def test_horizon_ei_uses_the_overall_incumbent_whatever_the_budget():
    ov = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    acq = HorizonExpectedImprovement(ov)
    mean = torch.tensor([0.8, 1.0, 0.95], dtype=torch.float64)
    std = torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64)
    got = acq(mean, std)
    assert got[0].item() == 0.0 and got[1].item() == pytest.approx(0.1)
    z = 0.05 / 0.1
    assert got[2].item() == pytest.approx(0.1 * (z * norm.cdf(z) + norm.pdf(z)), rel=1e-10)
    with pytest.raises(ConfigurationError, match="at least one observation"):
        HorizonExpectedImprovement(torch.tensor([]))


def test_optimizer_acquisition_defaults_and_refusal():
    from fms_lightning import LogUniform, SearchSpace
    from fms_lightning.optimizer import FMSOptimizer

    space = SearchSpace({"lr": LogUniform(1e-4, 1e-1)})
    assert FMSOptimizer(space, max_epochs=3, method="dyhpo").acquisition is Acquisition.EI_MF
    assert FMSOptimizer(space, max_epochs=3, method="dyhpo", acquisition="ei-horizon").acquisition \
        is Acquisition.EI_HORIZON
    with pytest.raises(ConfigurationError, match="acquisition='ucb' is unknown"):
        FMSOptimizer(space, max_epochs=3, method="dyhpo", acquisition="ucb")


def test_log_ei_matches_log_of_ei_where_ei_is_accurate_and_stays_finite_where_it_underflows():
    from fms_lightning.acquisition import ei_mf, log_ei_mf

    mean = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    std = torch.full_like(mean, 0.7)
    best = torch.zeros_like(mean)
    torch.testing.assert_close(log_ei_mf(mean, std, best), ei_mf(mean, std, best).log())
    far = torch.tensor([-60.0, -45.0, -30.0], dtype=torch.float64)
    one = torch.ones_like(far)
    assert (ei_mf(far, one, 0.0 * one)[:2] == 0).all()  # EI underflows
    log_ei = log_ei_mf(far, one, 0.0 * one)
    assert torch.isfinite(log_ei).all() and (log_ei.diff() > 0).all()  # still ranks the candidates


def test_the_acquisition_modules_return_log_ei_on_request():
    from fms_lightning.acquisition import ExpectedImprovementMF, HorizonExpectedImprovement

    mean, std = torch.tensor([0.2, 0.9], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64)
    acq = ExpectedImprovementMF(torch.tensor([1, 2]), torch.tensor([0.5, 0.6], dtype=torch.float64))
    log_acq = ExpectedImprovementMF(torch.tensor([1, 2]), torch.tensor([0.5, 0.6], dtype=torch.float64), log=True)
    torch.testing.assert_close(log_acq(mean, std, torch.tensor([1, 2])), acq(mean, std, torch.tensor([1, 2])).log())
    h, log_h = HorizonExpectedImprovement(torch.tensor([0.5])), HorizonExpectedImprovement(torch.tensor([0.5]), log=True)
    torch.testing.assert_close(log_h(mean, std), h(mean, std).log())
