"""Multi-fidelity expected improvement, EI_MF (eq. 5 of the FMS paper).

Glossary:
    x, j        a candidate config and the budget (epochs) it would be trained *to*.
    f(x, j)     the surrogate's posterior at the candidate: mean μ, std σ (larger is better).
    y_j^max     the best value observed at budget j; if nothing was observed at j, the best
                value observed at any budget (DESIGN.md).
    EI_MF       E[max{f(x, j) - y_j^max, 0}] = σ · (z Φ(z) + φ(z)), z = (μ - y_j^max) / σ.
    log EI_MF   log σ + log(z Φ(z) + φ(z)), computed without underflow for very negative z
                (the form of BoTorch's ``_log_ei_helper``); candidates are ranked by it when
                EI_MF underflows to 0 for all of them.

The budget EI_MF is computed at is the budget the optimizer then trains: a paused
trial with j-1 observed epochs is scored at j, and is resumed for exactly one epoch.

Look-ahead variant (``acquisition="ei-horizon"``, in the spirit of freeze-thaw methods such
as Quick-Tune and ifBO): a candidate is scored by the EI of its *forecast* at the horizon
H over the incumbent y^max (the best value observed at any budget):
EI_H = E[max{f(x, H | Y_{i,1..j-1}, W_{i,j-1}) - y^max, 0}]. It still trains one epoch.
H is the deepest budget observed so far (at least the candidate's next epoch j): forecasts
further out than any observation are extrapolations of the deep kernel, which measured badly
(a replay on ``cnn-mirror-full`` chased diverged configs when H was the maximum budget).
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn

from fms_lightning.errors import ConfigurationError

__all__ = [
    "Acquisition", "ei_mf", "log_ei_mf", "best_per_budget", "ExpectedImprovementMF", "HorizonExpectedImprovement",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_SQRT_PI_DIV_2 = 0.5 * math.log(math.pi / 2.0)


class Acquisition(str, Enum):
    """How :class:`~fms_lightning.optimizer.FMSOptimizer` scores candidates.

    ``EI_MF``: eq. 5 (DyHPO), the candidate's next epoch against y_j^max.
    ``EI_HORIZON``: the forecast at the maximum budget against the best value seen so far.
    """

    EI_MF = "ei-mf"
    EI_HORIZON = "ei-horizon"


def ei_mf(mean: torch.Tensor, std: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Closed-form EI_MF (eq. 5), vectorised.

    Args:
        mean: Posterior means μ, `(m,)`.
        std: Posterior standard deviations σ, `(m,)`; σ = 0 gives ``max(μ - best, 0)``.
        best: y_j^max for each candidate's budget, `(m,)` (or broadcastable).

    Returns:
        EI_MF values, `(m,)`, non-negative.
    """
    mean, std, best = torch.broadcast_tensors(mean, std, best)
    improvement = mean - best
    safe = std.clamp_min(1e-12)
    z = improvement / safe
    ei = safe * (z * torch.special.ndtr(z) + _INV_SQRT_2PI * torch.exp(-0.5 * z * z))
    return torch.where(std > 0, ei.clamp_min(0.0), improvement.clamp_min(0.0))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_h(z: torch.Tensor) -> torch.Tensor:
    """log(z Φ(z) + φ(z)), stable for every z (BoTorch's ``_log_ei_helper``)."""
    bound = -1.0
    upper = z.masked_fill(z < bound, bound)
    log_upper = torch.log(upper * torch.special.ndtr(upper) + _INV_SQRT_2PI * torch.exp(-0.5 * upper * upper))
    far = -1.0 / math.sqrt(torch.finfo(z.dtype).eps)
    lower = z.masked_fill(z > bound, bound)
    lower_eps = lower.masked_fill(z < far, far)
    # w = log(|z| Φ(z) / φ(z)) < 0 for z <= -1, via the scaled complementary error function
    w = torch.log(torch.special.erfcx(-lower_eps / math.sqrt(2.0)) * lower_eps.abs()) + _LOG_SQRT_PI_DIV_2
    log_phi = -0.5 * lower * lower - _LOG_SQRT_2PI
    log_lower = log_phi + torch.where(z > far, _log1mexp(w), -2.0 * lower.abs().log())
    return torch.where(z > bound, log_upper, log_lower)


def log_ei_mf(mean: torch.Tensor, std: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """log EI_MF (eq. 5), finite where :func:`ei_mf` underflows to 0.

    Args:
        mean: Posterior means μ, `(m,)`.
        std: Posterior standard deviations σ, `(m,)` (clamped at 1e-12).
        best: y_j^max for each candidate's budget, `(m,)` (or broadcastable).

    Returns:
        `(m,)` values of log EI_MF.

    >>> round(float(log_ei_mf(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]))), 4)
    -0.9189
    """
    mean, std, best = torch.broadcast_tensors(mean, std, best)
    safe = std.clamp_min(1e-12)
    return _log_h((mean - best) / safe) + safe.log()


def best_per_budget(
    observed_budgets: torch.Tensor, observed_values: torch.Tensor, budgets: torch.Tensor
) -> torch.Tensor:
    """y_j^max for each requested budget (eq. 5), with the "best overall" fallback.

    Args:
        observed_budgets: Budgets j of the observations, `(n,)` integer.
        observed_values: Observed values (larger is better), `(n,)`.
        budgets: Budgets to look up, `(m,)` integer.

    Returns:
        `(m,)` tensor: the best value observed at each budget, or the best overall where
        nothing was observed at that budget.

    Raises:
        ConfigurationError: If there are no observations or the shapes differ.
    """
    if observed_values.numel() == 0 or observed_budgets.shape != observed_values.shape:
        raise ConfigurationError(
            f"best_per_budget received {observed_values.numel()} values with budgets of shape "
            f"{tuple(observed_budgets.shape)}; expected at least one observation and equal shapes."
        )
    ob = observed_budgets.long()
    size = int(max(int(ob.max()), int(budgets.max()) if budgets.numel() else 0)) + 1
    table = torch.full((size,), float("-inf"), dtype=observed_values.dtype)
    table = table.scatter_reduce(0, ob, observed_values, reduce="amax", include_self=True)
    overall = observed_values.max()
    table = torch.where(torch.isinf(table), overall, table)
    return table[budgets.long()]


class ExpectedImprovementMF(nn.Module):
    """EI_MF (eq. 5) given the observations so far.

    Args:
        observed_budgets: Budgets of the observations, `(n,)`.
        observed_values: Observed values (larger is better), `(n,)`.
        log: Return log EI_MF (:func:`log_ei_mf`): the ranking where EI_MF underflows.

    Raises:
        ConfigurationError: If there are no observations.

    >>> acq = ExpectedImprovementMF(torch.tensor([1, 1, 2]), torch.tensor([0.1, 0.3, 0.5]))
    >>> acq(torch.tensor([0.3]), torch.tensor([0.0]), torch.tensor([1])).tolist()
    [0.0]
    """

    def __init__(self, observed_budgets: torch.Tensor, observed_values: torch.Tensor, *, log: bool = False) -> None:
        super().__init__()
        if observed_values.numel() == 0:
            raise ConfigurationError("ExpectedImprovementMF needs at least one observation; got none.")
        self.log = log
        self.register_buffer("observed_budgets", observed_budgets.long().reshape(-1))
        self.register_buffer("observed_values", observed_values.reshape(-1))

    def forward(self, mean: torch.Tensor, std: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """EI_MF of candidates with posterior ``mean``/``std`` `(m,)` at ``budget`` `(m,)`.

        Returns:
            `(m,)` EI_MF values (log EI_MF with ``log=True``).
        """
        best = best_per_budget(self.observed_budgets, self.observed_values.to(mean.dtype), budget)
        return (log_ei_mf if self.log else ei_mf)(mean, std, best)


class HorizonExpectedImprovement(nn.Module):
    """EI of a forecast at the horizon over the incumbent (the best value observed at any budget).

    Args:
        observed_values: Observed values (larger is better), `(n,)`.
        log: Return the logarithm of the EI (:func:`log_ei_mf`).

    Raises:
        ConfigurationError: If there are no observations.

    >>> acq = HorizonExpectedImprovement(torch.tensor([0.1, 0.3, 0.5]))
    >>> [round(v, 6) for v in acq(torch.tensor([0.7, 0.4]), torch.tensor([0.0, 0.0])).tolist()]
    [0.2, 0.0]
    """

    def __init__(self, observed_values: torch.Tensor, *, log: bool = False) -> None:
        super().__init__()
        if observed_values.numel() == 0:
            raise ConfigurationError("HorizonExpectedImprovement needs at least one observation; got none.")
        self.log = log
        self.register_buffer("incumbent", observed_values.reshape(-1).max())

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """EI of forecasts with posterior ``mean``/``std`` `(m,)` at the horizon.

        Returns:
            `(m,)` values (their logarithms with ``log=True``).
        """
        return (log_ei_mf if self.log else ei_mf)(mean, std, self.incumbent.to(mean.dtype))
