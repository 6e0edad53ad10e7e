"""A small CNN for scikit-learn's 8×8 digits, trained with a NAdamW-list preset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchmetrics
from torch import Tensor, nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.module import NAdamWListModule, PresetLike

__all__ = ["DigitsCNN"]


class DigitsCNN(NAdamWListModule):
    """Two 3×3 conv layers, a 2×2 max-pool and a two-layer classifier head.

    Args:
        preset: The NAdamW-list preset (rank, name or point).
        channels: Output channels of the two conv layers.
        hidden: Width of the hidden layer of the head.
        num_classes: Number of classes.
        **kwargs: Passed to :class:`~fms_lightning.optim.NAdamWListModule`
            (``total_steps``, ``total_epochs``, ``exclude_bias_and_norm``, ...).

    Raises:
        ConfigurationError: For non-positive widths.

    Logs ``train_loss``, ``val_loss`` and ``val_acc``.
    """

    def __init__(
        self,
        preset: PresetLike = 1,
        *,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        num_classes: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(preset, **kwargs)
        c1, c2 = (int(c) for c in channels)
        if min(c1, c2, hidden, num_classes) < 1:
            raise ConfigurationError(f"Widths must be positive, got channels={channels!r}, hidden={hidden!r}.")
        self.save_hyperparameters({"channels": [c1, c2], "hidden": hidden, "num_classes": num_classes})
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits `(batch, num_classes)` for images `(batch, 1, 8, 8)`."""
        return self.head(self.features(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        x, y = batch
        loss = self.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits.argmax(dim=-1), y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    @torch.no_grad()
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=-1)
