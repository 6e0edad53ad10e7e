"""The ``zoo`` hub: a model zoo of one small CNN, like the FMS paper's *Simple CNN Hub*.

The paper's Simple CNN Hub is the CNN zoo of Unterthiner et al. (2020): one small
architecture trained many times with different hyperparameters, so that members differ
in quality and only their weights tell them apart. The ``zoo`` hub does the same at the
scale of digits: every member is ``DigitsConvNet(c1=4, c2=8)`` (1 626 parameters),
pretrained on the plain half of digits with its own *recipe*, drawn from a seeded RNG.

Recipe (one per member; member ``i`` draws from ``default_rng([seed, 0x200, i])``, so the
first members of a larger zoo are the members of a smaller one):

=================  =========================================================================
``seed``           initialisation and data-order seed (``1000 * seed + i``)
``init_scale``     the default initialisation multiplied by it, log-uniform in [0.3, 3]
``lr``             AdamW learning rate of the pretraining, log-uniform in [1e-4, 3e-2]
``weight_decay``   AdamW weight decay, log-uniform in [1e-5, 1e-1]
``dropout``        dropout of the head during pretraining, uniform in [0, 0.5]
``epochs``         pretraining length: 0 for every tenth member (``i % 10 == 0``: a fresh
                   initialisation), otherwise uniform in {1, ..., 20}
``data_fraction``  share of the pretraining pool used, uniform in [0.1, 1]
``label_noise``    share of those labels replaced by uniformly random ones, uniform in [0, 0.5]
=================  =========================================================================

The pretraining pool is 80% of the plain half of digits; the other 20% is a held-out set,
the same for every member, on which ``pretrain_val_acc`` is measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from fms_lightning.errors import ConfigurationError

__all__ = ["ZOO_ARCH", "ZooRecipe", "zoo_recipe", "pretrain_zoo_member", "zoo_pretrain_data", "zoo_pretrain_acc"]

ZOO_ARCH: dict[str, Any] = {"arch": "cnn", "c1": 4, "c2": 8}
_BATCH = 64
_HELD_OUT = 0.2


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo member was pretrained (see the module docstring for the ranges).

    Raises:
        ConfigurationError: If a value is out of range.
    """

    seed: int
    init_scale: float
    lr: float
    weight_decay: float
    dropout: float
    epochs: int
    data_fraction: float
    label_noise: float

    def __post_init__(self) -> None:
        if (self.init_scale <= 0 or self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1
                or self.epochs < 0 or not 0 < self.data_fraction <= 1 or not 0 <= self.label_noise <= 1):
            raise ConfigurationError(
                f"ZooRecipe received {self!r}; expected init_scale, lr > 0, weight_decay >= 0, dropout in [0, 1), "
                f"epochs >= 0, data_fraction in (0, 1] and label_noise in [0, 1]."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``meta.json``."""
        return asdict(self)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def zoo_recipe(index: int, *, seed: int = 0) -> ZooRecipe:
    """The pretraining recipe of zoo member ``index``.

    Args:
        index: Member index (0-based).
        seed: The benchmark seed.

    Returns:
        The :class:`ZooRecipe`; the same for the same ``(index, seed)``.

    >>> zoo_recipe(0).epochs, zoo_recipe(3) == zoo_recipe(3)
    (0, True)
    """
    rng = np.random.default_rng([seed, 0x200, index])
    init_scale = _log_uniform(rng, 0.3, 3.0)
    lr = _log_uniform(rng, 1e-4, 3e-2)
    weight_decay = _log_uniform(rng, 1e-5, 1e-1)
    dropout = float(rng.uniform(0.0, 0.5))
    epochs = int(rng.integers(1, 21))
    data_fraction = float(rng.uniform(0.1, 1.0))
    label_noise = float(rng.uniform(0.0, 0.5))
    return ZooRecipe(seed=1000 * seed + index, init_scale=round(init_scale, 4), lr=float(f"{lr:.4g}"),
                     weight_decay=float(f"{weight_decay:.4g}"), dropout=round(dropout, 3),
                     epochs=0 if index % 10 == 0 else epochs, data_fraction=round(data_fraction, 3),
                     label_noise=round(label_noise, 3))


@lru_cache(maxsize=2)
def zoo_pretrain_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_pool, y_pool, x_held, y_held)``: the pretraining pool and the shared held-out set.

    The tensors are cached and shared between calls: do not modify them in place.
    """
    from fms_lightning.examples.digits_hub import digits_split

    x, y = digits_split("pretrain")
    order = np.random.default_rng([seed, 0x201]).permutation(len(y))
    n_held = int(round(_HELD_OUT * len(y)))
    held, pool = order[:n_held], order[n_held:]
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    return xt[pool], yt[pool], xt[held], yt[held]


def pretrain_zoo_member(recipe: ZooRecipe, x_pool: torch.Tensor, y_pool: torch.Tensor) -> nn.Module:
    """Build a zoo member and pretrain it with ``recipe`` on the pool (AdamW, batch size 64).

    Args:
        recipe: The member's recipe.
        x_pool: Pretraining images `(n, 1, 8, 8)`.
        y_pool: Their labels `(n,)`.

    Returns:
        The pretrained module, in eval mode, with its dropout reset to 0.
    """
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, and restore it after
        torch.manual_seed(recipe.seed)
        return _pretrain(recipe, x_pool, y_pool)


def _pretrain(recipe: ZooRecipe, x_pool: torch.Tensor, y_pool: torch.Tensor) -> nn.Module:
    from fms_lightning.examples.hub_models import make
    from fms_lightning.optim.module import set_dropout

    model = make(**ZOO_ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(recipe.init_scale)
    gen = torch.Generator().manual_seed(recipe.seed)
    n = max(_BATCH, int(round(recipe.data_fraction * len(y_pool))))
    idx = torch.randperm(len(y_pool), generator=gen)[:n]
    x, y = x_pool[idx], y_pool[idx].clone()
    noisy = torch.rand(n, generator=gen) < recipe.label_noise
    y[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=gen)
    if recipe.epochs:
        set_dropout(model, recipe.dropout)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        model.train()
        for _ in range(recipe.epochs):
            for batch in torch.randperm(n, generator=gen).split(_BATCH):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
    set_dropout(model, 0.0)
    return model.eval()


def zoo_pretrain_acc(model: nn.Module, x_held: torch.Tensor, y_held: torch.Tensor) -> float:
    """Accuracy of a member on the shared held-out part of the pretraining half."""
    model.eval()
    with torch.no_grad():
        return float((model(x_held).argmax(-1) == y_held).float().mean())
