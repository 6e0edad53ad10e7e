"""Benchmark metrics: Kendall's τ between rankings, and regret over budget.

Glossary:
    y*          the best value any query of the benchmark can return (max over configs and epochs).
    incumbent   the best value observed so far in a run.
    regret      y* - incumbent after each epoch of budget; never increases, never negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau as _scipy_kendalltau

from fms_lightning.errors import ConfigurationError

__all__ = ["kendall_tau", "regret_curve", "unobserved_fill"]


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
