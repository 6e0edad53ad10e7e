"""When to stop the Adam loop on eq. 3: a plateau test on the loss.

Glossary:
    L_t     the negative log marginal likelihood (eq. 3, per row, as gpytorch's
            ``ExactMarginalLogLikelihood`` returns it) after Adam step t.
    w       the window: the test runs every ``w`` steps.
    B_k     the best (lowest) L_t seen up to the end of window k.
    tol     the relative tolerance.

The loop stops after window k when ``B_{k-1} - B_k <= tol * max(1, |B_k|)``: over the last
``w`` steps the best loss improved by less than ``tol`` of its scale. ``initial_steps`` and
``refine_steps`` stay caps. The test reads only the loss, so a stopped fit is the same fit
an uninterrupted one would have been up to that step (and for a fixed seed the same steps
are taken every time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from fms_lightning.errors import ConfigurationError

__all__ = ["LossPlateau", "plateau_step"]


def plateau_step(losses: Sequence[float], window: int, rel_tol: float) -> int | None:
    """The number of steps after which :class:`LossPlateau` stops on ``losses``, or None.

    Args:
        losses: L_1, L_2, ... of one fit.
        window: w.
        rel_tol: tol.

    Returns:
        The first multiple k·w (k ≥ 2) at which the plateau test holds, or None if it never does.

    >>> plateau_step([3.0, 2.0, 1.5, 1.4, 1.39, 1.389, 1.3889, 1.3888], window=2, rel_tol=0.01)
    6
    """
    stopper = LossPlateau(window=window, rel_tol=rel_tol)
    for t, loss in enumerate(losses, start=1):
        if stopper.update(loss):
            return t
    return None


@dataclass
class LossPlateau:
    """Stateful plateau test, updated once per Adam step (see the module glossary).

    Args:
        window: w, the steps between two tests (and the shortest fit that can stop: 2·w).
        rel_tol: tol; 0 never stops on a plateau (only a non-improving window would).

    Raises:
        ConfigurationError: If ``window < 1`` or ``rel_tol < 0``.
    """

    window: int = 25
    rel_tol: float = 1e-3
    _steps: int = field(default=0, init=False, repr=False)
    _best: float = field(default=math.inf, init=False, repr=False)
    _best_at_last_test: float = field(default=math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        if int(self.window) != self.window or self.window < 1 or not self.rel_tol >= 0:
            raise ConfigurationError(
                f"LossPlateau received window={self.window!r}, rel_tol={self.rel_tol!r}; expected an "
                f"integer window >= 1 and rel_tol >= 0 (e.g. window=25, rel_tol=1e-3)."
            )

    def update(self, loss: float) -> bool:
        """Record L_t; True when the fit should stop after this step."""
        self._steps += 1
        if loss < self._best:
            self._best = float(loss)
        if self._steps % self.window:
            return False
        previous, self._best_at_last_test = self._best_at_last_test, self._best
        if math.isinf(previous):  # the first window only sets B_1
            return False
        return previous - self._best <= self.rel_tol * max(1.0, abs(self._best))
