"""Callbacks a tuner attaches to every trial segment: per-epoch seeding and a finite-loss guard."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from fms_lightning.errors import TrialFailedError

__all__ = ["EpochSeeder", "NonFiniteLossGuard", "epoch_seed"]


def epoch_seed(seed: int, key: str, epoch: int) -> int:
    """A 63-bit seed that depends only on ``(seed, key, epoch)``."""
    digest = hashlib.sha256(f"{seed}|{key}|{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochSeeder(Callback):
    """Reseed Python, NumPy and torch so that every training epoch's randomness is fixed.

    Epoch ``e`` (0-based) starts from the seed ``epoch_seed(seed, key, e)``: set at
    fit start for the first epoch trained, and at the end of each epoch for the
    next. Lightning draws a shuffling DataLoader's order when the epoch's iterator
    is created, which for the first epoch of a ``fit`` call happens before
    ``on_train_epoch_start``; reseeding at the previous epoch's end covers both
    cases. So training epochs 1+1+1 in three ``fit`` calls (resuming from
    checkpoints) draws the same shuffles and dropout masks as 3 epochs in one call.

    Args:
        seed: The study seed.
        key: What distinguishes runs under one seed, e.g. the trial id.
        first_epoch: The 0-based epoch this ``fit`` call starts at (the epochs
            already in the checkpoint it resumes). Lightning restores its loop
            counters only after ``on_fit_start``, so a resuming caller says it.
    """

    def __init__(self, seed: int, key: str, *, first_epoch: int = 0) -> None:
        self.seed = int(seed)
        self.key = str(key)
        self.first_epoch = int(first_epoch)

    def _reseed(self, epoch: int) -> None:
        s = epoch_seed(self.seed, self.key, epoch)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(self.first_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(trainer.current_epoch + 1)


class NonFiniteLossGuard(Callback):
    """Stop a run with :class:`TrialFailedError` as soon as the training loss is NaN or infinite."""

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailedError(
                    f"non-finite training loss ({value}) at epoch {trainer.current_epoch + 1}, batch {batch_idx}"
                )
