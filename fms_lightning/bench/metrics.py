"""Benchmark metrics: Kendall's τ between rankings, regret over budget, and how easy a benchmark is.

Glossary:
    y*          the best value any query of the benchmark can return (max over configs and epochs).
    incumbent   the best value observed so far in a run.
    regret      y* - incumbent after each epoch of budget; never increases, never negative.
    near-best   a value within ``tol`` (absolute, in the metric's units) of a reference value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import kendalltau as _scipy_kendalltau

from fms_lightning.errors import ConfigurationError

__all__ = ["Easiness", "easiness", "kendall_tau", "regret_curve", "unobserved_fill"]


def kendall_tau(predicted: Sequence[float], true: Sequence[float]) -> float:
    """Kendall's τ-b between two score vectors over the same items (item k at position k).

    The scores themselves are compared (equivalently their rank vectors), never the
    lists of item indices sorted by score, which would measure something else.

    Args:
        predicted: A score per item `(n,)`.
        true: The true score per item `(n,)`.

    Returns:
        τ in [-1, 1]; 0.0 when either vector is constant (τ is undefined there).

    Raises:
        ConfigurationError: If the lengths differ or fewer than 2 items are given.

    >>> kendall_tau([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    1.0
    """
    p, t = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    if p.shape != t.shape or p.ndim != 1 or p.size < 2:
        raise ConfigurationError(
            f"kendall_tau received shapes {p.shape} and {t.shape}; expected two equal 1-d vectors of >= 2 items."
        )
    tau = _scipy_kendalltau(p, t).statistic
    return 0.0 if not np.isfinite(tau) else float(tau)


def unobserved_fill(observed: Sequence[float | None]) -> np.ndarray:
    """Scores for ``random`` search: observed values, unobserved items tied below them all.

    Args:
        observed: An observed final value per item, or None where the item was not run.

    Returns:
        `(n,)` scores: unobserved items get one shared value below the lowest observation.
    """
    vals = [v for v in observed if v is not None]
    floor = (min(vals) if vals else 0.0) - 1.0
    return np.array([floor if v is None else float(v) for v in observed], dtype=float)


def regret_curve(values: Sequence[float], best_possible: float) -> np.ndarray:
    """Regret after each epoch of budget: ``best_possible - max(values[:b])`` for ``b = 1..n``.

    Args:
        values: The value observed with each epoch of budget, in spending order (larger is better).
        best_possible: y*, the best value any query can return.

    Returns:
        `(n,)`, non-increasing.

    Raises:
        ConfigurationError: If a value exceeds ``best_possible`` (y* was computed wrongly).

    >>> regret_curve([0.5, 0.4, 0.9], 1.0).round(2).tolist()
    [0.5, 0.5, 0.1]
    """
    v = np.asarray(values, dtype=float)
    if v.size and float(v.max()) > best_possible + 1e-12:
        raise ConfigurationError(
            f"regret_curve: observed {float(v.max())} > best_possible={best_possible}; y* must be the best "
            f"value over every config and epoch of the benchmark."
        )
    return best_possible - np.maximum.accumulate(v) if v.size else v


@dataclass(frozen=True)
class Easiness:
    """How easy a benchmark is for random search (see :func:`easiness`).

    Args:
        n_configs: Configs of the benchmark.
        tol: The near-best tolerance (absolute).
        y_star: y*, max over configs and epochs.
        best_final: The best final-epoch value.
        final_near_y_star: Fraction of configs whose final value is within ``tol`` of y*.
        final_near_best_final: Fraction of configs whose final value is within ``tol`` of ``best_final``.
        any_epoch_near_y_star: Fraction of configs with a value within ``tol`` of y* at some epoch.
        draws_for_half: Configs drawn uniformly at random (with replacement) and trained to the end
            for an even chance that one has a final value within ``tol`` of y*
            (``inf`` when no config has one).
    """

    n_configs: int
    tol: float
    y_star: float
    best_final: float
    final_near_y_star: float
    final_near_best_final: float
    any_epoch_near_y_star: float
    draws_for_half: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a report or ``json.dumps``)."""
        return dict(self.__dict__)


def easiness(curves: Any, *, tol: float = 0.01) -> Easiness:
    """Fractions of near-best configs of a benchmark (larger is easier for random search).

    Args:
        curves: The learning curves `(n_configs, E)` (larger is better), or a
            :class:`~fms_lightning.bench.table.Benchmark` (its ``curves``).
        tol: Absolute tolerance; 0.01 is one accuracy point for ``val_acc``.

    Returns:
        The :class:`Easiness` figures.

    Raises:
        ConfigurationError: If ``curves`` is not a non-empty 2-d array or ``tol`` is negative.

    >>> e = easiness([[0.5, 0.90], [0.6, 0.995], [0.7, 0.80], [0.999, 0.2]])
    >>> e.final_near_y_star, e.final_near_best_final, e.any_epoch_near_y_star, e.draws_for_half
    (0.25, 0.25, 0.5, 3.0)
    """
    c = np.asarray(getattr(curves, "curves", curves), dtype=float)
    if c.ndim != 2 or c.size == 0 or not tol >= 0:
        raise ConfigurationError(
            f"easiness received curves of shape {c.shape} and tol={tol}; expected a non-empty (n_configs, E) "
            f"array and tol >= 0."
        )
    y_star, final = float(c.max()), c[:, -1]
    p = float(np.mean(final >= y_star - tol))
    if p >= 1.0:
        draws = 1.0
    elif p <= 0.0:
        draws = math.inf
    else:
        draws = float(math.ceil(math.log(0.5) / math.log1p(-p)))
    return Easiness(
        n_configs=int(c.shape[0]), tol=float(tol), y_star=y_star, best_final=float(final.max()),
        final_near_y_star=p, final_near_best_final=float(np.mean(final >= final.max() - tol)),
        any_epoch_near_y_star=float(np.mean(c.max(axis=1) >= y_star - tol)), draws_for_half=draws,
    )
