"""Surrogate rows: one observation becomes one row, with no leak (DESIGN.md).

Glossary (FMS paper notation):
    x           a config encoded into the unit cube, `(n_hp,)`.
    j           the budget in epochs; the label of a row is y_{i,j}, the metric after epoch j.
    Y_{i,j-1}   the learning curve y_{i,1}, ..., y_{i,j-1}: everything observed *before* epoch j.
    W_{i,j-1}   the weights after epoch j-1; W_{i,0} are the starting weights (hub checkpoint
                or initialisation). Rows carry the *embedding* of W, looked up by content key.

Row layout (:class:`InputLayout`), all float64, concatenated column-wise::

    [ x (n_hp) | j / max_epochs (1) | curve (C) | curve mask (C) | weight features (n_w) ]

with ``C = max_epochs - 1``. The curve is **left-aligned and zero-padded on the right**:
position k holds y_{i,k+1} for k < j-1 and 0 afterwards; the mask holds 1 where a value
was observed and 0 at padding, so a padded 0 is never mistaken for an observed 0. The
curve is stored in the optimizer's internal units (larger is better); the surrogate
normalises it with the label normaliser.

Nothing here reads epoch j or later when building the row for y_{i,j}:
:func:`make_row` only receives ``curve[: j - 1]`` and ``W_{i,j-1}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fms_lightning.errors import ConfigurationError

__all__ = ["InputLayout", "make_row", "training_rows", "forecast_rows", "impute_failures", "cap_rows", "add_forecast_rows"]


@dataclass(frozen=True)
class InputLayout:
    """Column layout of surrogate inputs.

    Args:
        n_hp: Width of the encoded config x.
        max_epochs: The maximum budget; the curve context has ``max_epochs - 1`` slots.
        n_weight: Width of the weight features (0 when weights are not used).

    Raises:
        ConfigurationError: If a size is negative or ``max_epochs < 1``.
    """

    n_hp: int
    max_epochs: int
    n_weight: int = 0

    def __post_init__(self) -> None:
        if self.n_hp < 1 or self.max_epochs < 1 or self.n_weight < 0:
            raise ConfigurationError(
                f"InputLayout received n_hp={self.n_hp}, max_epochs={self.max_epochs}, "
                f"n_weight={self.n_weight}; expected n_hp >= 1, max_epochs >= 1, n_weight >= 0."
            )

    @property
    def curve_len(self) -> int:
        return self.max_epochs - 1

    @property
    def width(self) -> int:
        return self.n_hp + 1 + 2 * self.curve_len + self.n_weight

    @property
    def budget_col(self) -> int:
        return self.n_hp

    @property
    def curve_slice(self) -> slice:
        return slice(self.n_hp + 1, self.n_hp + 1 + self.curve_len)

    @property
    def mask_slice(self) -> slice:
        s = self.curve_slice.stop
        return slice(s, s + self.curve_len)

    @property
    def weight_slice(self) -> slice:
        s = self.mask_slice.stop
        return slice(s, s + self.n_weight)


def make_row(
    layout: InputLayout,
    x: torch.Tensor,
    j: int,
    context: Sequence[float],
    weight_features: torch.Tensor | None = None,
    *,
    horizon: int | None = None,
) -> torch.Tensor:
    """Build the input row for the label y_{i,j} (eq. 7's ψ inputs).

    Args:
        layout: The column layout.
        x: Encoded config, `(n_hp,)`.
        j: Budget in epochs, ``1 <= j <= max_epochs``.
        context: Y_{i,1..j-1}; must have exactly ``j - 1`` entries.
        weight_features: Embedding of W_{i,j-1}, `(n_weight,)`, or None if unused.
        horizon: Forecast y_{i,horizon} (``horizon >= j``) from the same inputs: the budget
            column says ``horizon`` while the curve and weights stop before epoch ``j``. Default
            ``j`` (the next epoch).

    Returns:
        A float64 row of shape `(layout.width,)`.

    Raises:
        ConfigurationError: If ``j`` or ``horizon`` is out of range or ``context`` is not ``j - 1`` long.
    """
    horizon = j if horizon is None else int(horizon)
    if not 1 <= j <= horizon <= layout.max_epochs:
        raise ConfigurationError(
            f"make_row: budget j={j}, horizon={horizon} outside 1 <= j <= horizon <= {layout.max_epochs}."
        )
    if len(context) != j - 1:
        raise ConfigurationError(
            f"make_row: received {len(context)} curve values for budget j={j}; expected j-1={j - 1} "
            f"(only epochs before j may be used)."
        )
    row = torch.zeros(layout.width, dtype=torch.float64)
    row[: layout.n_hp] = x
    row[layout.budget_col] = horizon / layout.max_epochs
    if j > 1:
        c0 = layout.curve_slice.start
        m0 = layout.mask_slice.start
        row[c0 : c0 + j - 1] = torch.as_tensor(list(context), dtype=torch.float64)
        row[m0 : m0 + j - 1] = 1.0
    if layout.n_weight:
        if weight_features is None:
            raise ConfigurationError("make_row: the layout uses weight features but none were given.")
        row[layout.weight_slice] = weight_features.to(torch.float64)
    return row


def training_rows(
    layout: InputLayout,
    trials: Sequence[tuple[torch.Tensor, Sequence[float], Sequence[str | None]]],
    embeddings: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per observed (i, j).

    Args:
        layout: The column layout.
        trials: For each trial, ``(x_i, curve_i, weight_keys_i)`` where ``curve_i[j-1]`` is
            y_{i,j} and ``weight_keys_i[e]`` is the content key of W_{i,e} (``e = 0`` is the
            starting weights). Only ``weight_keys_i[j-1]`` is read for the row of y_{i,j}.
        embeddings: ``{key: (n_weight,) tensor}``; required when ``layout.n_weight > 0``.

    Returns:
        ``(inputs, targets)`` of shapes `(n, layout.width)` and `(n,)`.
    """
    rows, ys = [], []
    for x, curve, keys in trials:
        for j in range(1, len(curve) + 1):
            w = None
            if layout.n_weight:
                w = embeddings[keys[j - 1]]  # type: ignore[index]
            rows.append(make_row(layout, x, j, curve[: j - 1], w))
            ys.append(float(curve[j - 1]))
    if not rows:
        return torch.zeros(0, layout.width, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(rows), torch.tensor(ys, dtype=torch.float64)


def forecast_rows(
    layout: InputLayout,
    trials: Sequence[tuple[torch.Tensor, Sequence[float], Sequence[str | None]]],
    embeddings: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Look-ahead rows: each trial's latest value y_{i,J} forecast from shorter contexts.

    For a trial with ``J >= 2`` observed epochs, one row per context length ``m = 0..J-2``:
    the inputs are Y_{i,1..m} and W_{i,m} with the budget column at ``J``, the label y_{i,J}.
    These teach the surrogate to forecast several epochs ahead (what a look-ahead acquisition
    asks of it); no input reaches epoch ``m + 1`` or later, so there is no leak.

    Args:
        layout: The column layout.
        trials: As for :func:`training_rows`.
        embeddings: As for :func:`training_rows`.

    Returns:
        ``(inputs, targets)`` of shapes `(n, layout.width)` and `(n,)`; ``n = sum(J_i - 1)``.
    """
    rows, ys = [], []
    for x, curve, keys in trials:
        big_j = len(curve)
        for m in range(big_j - 1):
            w = embeddings[keys[m]] if layout.n_weight else None  # type: ignore[index]
            rows.append(make_row(layout, x, m + 1, curve[:m], w, horizon=big_j))
            ys.append(float(curve[big_j - 1]))
    if not rows:
        return torch.zeros(0, layout.width, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(rows), torch.tensor(ys, dtype=torch.float64)


def impute_failures(
    rows: torch.Tensor, y: torch.Tensor, failed_rows: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one row per failure, labelled with the worst observed value (so failing regions are avoided).

    Args:
        rows: Training inputs `(n, width)`.
        y: Their labels `(n,)` (larger is better).
        failed_rows: For each trial that failed while running, the row of the epoch it failed at.

    Returns:
        ``(rows, y)`` with the failures appended; unchanged when there are none or no labels.
    """
    if not failed_rows or not y.numel():
        return rows, y
    pen = torch.stack(list(failed_rows))
    return torch.cat([rows, pen]), torch.cat([y, y.min().expand(len(failed_rows))])


def cap_rows(
    rows: torch.Tensor, y: torch.Tensor, curve_lengths: Sequence[int], cap: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``cap`` rows: each trial's latest observation, then a seeded subset of the rest.

    Args:
        rows: Inputs `(n, width)`, the observation rows first (trial by trial, as
            :func:`training_rows` orders them), then any others (e.g. imputed failures).
        y: Labels `(n,)`.
        curve_lengths: Each trial's number of observed epochs, in the rows' order.
        cap: The maximum number of rows.
        seed: Seeds the subset (with ``n``, so a larger set draws anew).

    Returns:
        ``(rows, y)``, in their original order, at most ``cap`` of them.
    """
    if rows.shape[0] <= cap:
        return rows, y
    ends = np.cumsum(list(curve_lengths))
    latest = [int(e) - 1 for k, e in enumerate(ends) if curve_lengths[k]]
    rest = np.setdiff1d(np.arange(rows.shape[0]), latest)
    pick = np.random.default_rng([seed, rows.shape[0]]).choice(rest, size=max(cap - len(latest), 0), replace=False)
    idx = torch.as_tensor(np.sort(np.concatenate([latest, pick]))[:cap] if len(latest) < cap else latest[-cap:])
    return rows[idx], y[idx]


def add_forecast_rows(
    rows: torch.Tensor, y: torch.Tensor, ahead: torch.Tensor, y_ahead: torch.Tensor, cap: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the look-ahead rows (:func:`forecast_rows`) that fit under ``cap`` (a seeded subset).

    Returns:
        ``(rows, y)`` followed by the look-ahead rows kept, in their order.
    """
    room = max(cap - rows.shape[0], 0)
    if ahead.shape[0] > room:
        pick = np.random.default_rng([seed, ahead.shape[0], 1]).choice(ahead.shape[0], room, replace=False)
        ahead, y_ahead = ahead[np.sort(pick)], y_ahead[np.sort(pick)]
    return torch.cat([rows, ahead]), torch.cat([y, y_ahead])
