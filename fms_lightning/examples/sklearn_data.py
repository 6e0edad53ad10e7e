"""Lightning DataModules over the datasets that ship inside scikit-learn.

Nothing is downloaded: ``load_digits``, ``load_wine`` and ``load_breast_cancer``
are bundled with scikit-learn. The split is stratified and seeded; features are
standardised with statistics of the training split only, so nothing of the
validation split leaks into training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fms_lightning.errors import ConfigurationError

__all__ = ["SklearnDataModule", "DATASETS", "load_arrays"]

DatasetName = Literal["digits", "wine", "breast_cancer"]
DATASETS: tuple[str, ...] = ("digits", "wine", "breast_cancer")


@dataclass(frozen=True)
class _Arrays:
    x: np.ndarray
    y: np.ndarray
    num_classes: int


def load_arrays(name: str) -> _Arrays:
    """Features and integer labels of a bundled scikit-learn dataset.

    The file is read once per process; each call returns new arrays.

    Raises:
        ConfigurationError: For an unknown dataset name (the message lists the valid ones).
    """
    if name not in DATASETS:
        raise ConfigurationError(f"Unknown dataset {name!r}; expected one of {DATASETS}.")
    x, y = _read(name)
    return _Arrays(x.copy(), y.copy(), int(y.max()) + 1)


@functools.lru_cache(maxsize=len(DATASETS))
def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A dataset's features and labels as scikit-learn reads them (a text file, parsed), read-only."""
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    bunch = loaders[name]()
    x, y = np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


class SklearnDataModule(pl.LightningDataModule):
    """A stratified, seeded train/validation split of a bundled scikit-learn dataset.

    Args:
        name: ``"digits"`` (8×8 images), ``"wine"`` or ``"breast_cancer"``.
        batch_size: Training and validation batch size.
        val_fraction: Fraction of the data held out for validation, in (0, 1).
        seed: Seed of the split. The training loader shuffles with torch's global RNG.
        as_image: For ``digits``, yield `(batch, 1, 8, 8)` images instead of
            `(batch, 64)` vectors.

    Raises:
        ConfigurationError: For an unknown dataset, a bad batch size or fraction,
            or ``as_image`` on a tabular dataset.

    >>> dm = SklearnDataModule("wine", batch_size=16)
    >>> dm.setup()
    >>> dm.num_features, dm.num_classes
    (13, 3)
    """

    def __init__(
        self,
        name: DatasetName = "digits",
        *,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        as_image: bool = False,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ConfigurationError(f"Unknown dataset {name!r}; expected one of {DATASETS}.")
        if int(batch_size) < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size!r}.")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ConfigurationError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
        if as_image and name != "digits":
            raise ConfigurationError(f"as_image=True only applies to 'digits', not {name!r}.")
        self.name = name
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.as_image = as_image
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.num_features = 0
        self.num_classes = 0

    def setup(self, stage: str | None = None) -> None:  # noqa: D102 (Lightning hook)
        if self.train_set is not None:
            return
        from sklearn.model_selection import train_test_split

        arrays = load_arrays(self.name)
        x_tr, x_va, y_tr, y_va = train_test_split(
            arrays.x, arrays.y, test_size=self.val_fraction, random_state=self.seed, stratify=arrays.y
        )
        mean = x_tr.mean(axis=0, keepdims=True)
        std = x_tr.std(axis=0, keepdims=True)
        std[std < 1e-8] = 1.0  # constant pixels (digits' borders) stay at 0
        x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
        if self.as_image:
            x_tr, x_va = x_tr.reshape(-1, 1, 8, 8), x_va.reshape(-1, 1, 8, 8)
        self.num_features = arrays.x.shape[1]
        self.num_classes = arrays.num_classes
        self.train_set = TensorDataset(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr))
        self.val_set = TensorDataset(torch.from_numpy(np.ascontiguousarray(x_va)), torch.from_numpy(y_va))

    def train_dataloader(self) -> DataLoader:  # noqa: D102 (Lightning hook)
        assert self.train_set is not None, "call setup() first"
        # Shuffled with torch's global RNG, drawn when each epoch starts: seed it with
        # lightning's seed_everything (or EpochSeeder, which makes resumed runs repeatable).
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:  # noqa: D102 (Lightning hook)
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 256))
