"""The feature extractor ψ of eq. 7 (φ of eq. 2 when weights are not used).

Glossary:
    x           encoded config, j budget, Y_{i,j-1} curve context, W weights (see ``dataset``).
    ψ           maps a row to ``out_features`` GP inputs (paper A.6: 10).

Architecture (paper A.6, inherited from DyHPO):
    - [x, j] -> Linear(64) -> LeakyReLU -> Linear(128) -> LeakyReLU,
    - curve and mask as 2 channels -> Conv1d(4, k=3) -> LeakyReLU -> Conv1d(8, k=3)
      -> LeakyReLU -> max over time (8 features); dropped when ``learning_curve=False``
      or when ``max_epochs == 1``,
    - weight features -> Linear(hidden) -> LeakyReLU, concatenated; the features are either
      the frozen embedding ξ in the rows (already embedded by the GMN/FLAT encoder), or, with
      a ``weight_module`` (``readout.GraphReadout``), ξ learned from the slot the rows carry,
    - concatenation -> Linear(out_features).
"""

from __future__ import annotations

import torch
from torch import nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.dataset import InputLayout

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """ψ(x, W, Y_{i,j-1}, j) for the deep kernel (eq. 7).

    Args:
        layout: Column layout of the input rows.
        learning_curve: Use the curve CNN (False gives the paper's "no CNN" ablation).
        hidden: Widths of the two hyperparameter+budget layers.
        channels: Channels of the two curve conv layers.
        weight_hidden: Width of the projection applied to weight features.
        out_features: Number of features handed to the GP kernel.
        weight_module: Maps the rows' weight columns `(n, n_weight)` to `(n, weight_module.out_dim)`
            before the projection (a trainable readout of the GMN); None reads the columns as ξ.

    Raises:
        ConfigurationError: If a width is not positive.
    """

    def __init__(
        self,
        layout: InputLayout,
        *,
        learning_curve: bool = True,
        hidden: tuple[int, int] = (64, 128),
        channels: tuple[int, int] = (4, 8),
        weight_hidden: int = 16,
        out_features: int = 10,
        weight_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if min(*hidden, *channels, weight_hidden, out_features) < 1:
            raise ConfigurationError(
                f"FeatureExtractor received hidden={hidden}, channels={channels}, "
                f"weight_hidden={weight_hidden}, out_features={out_features}; all must be >= 1."
            )
        self.layout = layout
        self.use_curve = bool(learning_curve) and layout.curve_len > 0
        self.out_features = out_features
        act = nn.LeakyReLU()
        self.hp_net = nn.Sequential(
            nn.Linear(layout.n_hp + 1, hidden[0]), act, nn.Linear(hidden[0], hidden[1]), act
        )
        width = hidden[1]
        if self.use_curve:
            self.curve_net = nn.Sequential(
                nn.Conv1d(2, channels[0], 3, padding=1),
                act,
                nn.Conv1d(channels[0], channels[1], 3, padding=1),
                act,
            )
            width += channels[1]
        self._has_weight_module = weight_module is not None and layout.n_weight > 0
        if layout.n_weight:
            if weight_module is None:
                self.weight_net = nn.Sequential(nn.Linear(layout.n_weight, weight_hidden), act)
            else:
                self.weight_net = nn.Sequential(weight_module, nn.Linear(weight_module.out_dim, weight_hidden), act)
            width += weight_hidden
        self.head = nn.Linear(width, out_features)

    @property
    def weight_module(self) -> nn.Module | None:
        """The trainable weight module given to the constructor, or None."""
        return self.weight_net[0] if self._has_weight_module else None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Map rows `(n, layout.width)` to features `(n, out_features)`."""
        lay = self.layout
        parts = [self.hp_net(rows[:, : lay.n_hp + 1])]
        if self.use_curve:
            curve = torch.stack([rows[:, lay.curve_slice], rows[:, lay.mask_slice]], dim=1)
            parts.append(self.curve_net(curve).amax(dim=-1))
        if lay.n_weight:
            parts.append(self.weight_net(rows[:, lay.weight_slice]))
        return self.head(torch.cat(parts, dim=-1))
