"""Regret against simulated wall time: training seconds from the cache plus each method's measured overhead.

Glossary:
    w_b         simulated wall time of a run after b epochs of budget: the cached training seconds of
                the b epochs it trained plus its overhead (``suggest()``, or Optuna's ask/tell) so far
                (:attr:`~fms_lightning.bench.replay.RunResult.wall_seconds_at_epoch`).
    r(t)        regret of a run at wall time t: its regret after the last epoch with w_b <= t; NaN
                before its first epoch ends; its final regret after its budget is spent.
    easiness    the fraction of a benchmark's configs whose final value is within 1% of y*
                (``final >= 0.99 * y*``): where it is large, a few random draws find a near-best config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fms_lightning.bench.replay import RunResult

__all__ = ["easiness", "epochs_at", "mean_se", "regret_at", "time_grid"]


def regret_at(run: RunResult, times: Sequence[float]) -> np.ndarray:
    """r(t) of one run at each of ``times`` `(n_times,)`; all NaN if the run has no wall times recorded.

    >>> run = RunResult("b", "random", 0, regret=(0.5, 0.2, 0.1), overhead_at_epoch=(0.0, 1.0, 1.0),
    ...                 train_seconds_at_epoch=(1.0, 2.0, 3.0))
    >>> regret_at(run, [0.5, 1.0, 3.5, 4.0, 9.0]).tolist()
    [nan, 0.5, 0.2, 0.1, 0.1]
    """
    wall = np.asarray(run.wall_seconds_at_epoch, dtype=float)
    t = np.asarray(times, dtype=float)
    if wall.size == 0:
        return np.full(t.shape, np.nan)
    idx = np.searchsorted(wall, t, side="right") - 1  # last epoch finished by t
    out = np.asarray(run.regret, dtype=float)[np.clip(idx, 0, None)]
    out[idx < 0] = np.nan
    return out


def epochs_at(run: RunResult, times: Sequence[float]) -> np.ndarray:
    """Epochs of budget finished by each of ``times`` `(n_times,)` (NaN if no wall times are recorded)."""
    wall = np.asarray(run.wall_seconds_at_epoch, dtype=float)
    if wall.size == 0:
        return np.full(len(times), np.nan)
    return np.searchsorted(wall, np.asarray(times, dtype=float), side="right").astype(float)


def time_grid(runs: Sequence[RunResult], n: int = 200) -> np.ndarray:
    """Log-spaced times from the earliest first epoch to the latest end over ``runs`` `(n,)` (empty if none)."""
    walls = [r.wall_seconds_at_epoch for r in runs if r.wall_seconds_at_epoch]
    if not walls:
        return np.empty(0)
    lo = max(min(w[0] for w in walls), 1e-6)
    hi = max(max(w[-1] for w in walls), lo * 1.001)
    return np.geomspace(lo, hi, n)


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and count over axis 0, ignoring NaN `(n_runs, n_times) -> 3 x (n_times,)`."""
    v = np.asarray(values, dtype=float)
    count = np.sum(np.isfinite(v), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(v, axis=0) / np.maximum(count, 1), np.nan)
        dev = np.where(np.isfinite(v), v - mean, 0.0)
        var = np.sum(dev**2, axis=0) / np.maximum(count - 1, 1)
        se = np.where(count > 1, np.sqrt(var / np.maximum(count, 1)), 0.0)
    return mean, se, count


def easiness(final: Sequence[float], best_possible: float, *, within: float = 0.01) -> float:
    """Fraction of configs whose final value is within ``within`` (relative) of y*.

    >>> easiness([0.99, 0.5, 0.995, 1.0], 1.0)
    0.75
    """
    f = np.asarray(final, dtype=float)
    return float(np.mean(f >= (1.0 - within) * best_possible))
