"""The zoo hub's member recipes and their pretraining (fms_lightning/bench/zoo.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fms_lightning.bench.zoo import (
    ZOO_ARCH, ZooRecipe, pretrain_zoo_member, zoo_pretrain_acc, zoo_pretrain_data, zoo_recipe,
)
from fms_lightning.errors import ConfigurationError
from fms_lightning.examples.hub_models import make


def test_recipes_span_the_documented_ranges() -> None:
    recipes = [zoo_recipe(i) for i in range(200)]
    epochs = np.array([r.epochs for r in recipes])
    assert np.all(epochs[::10] == 0) and np.all(epochs[np.arange(200) % 10 != 0] >= 1)
    assert epochs.max() == 20 and len(set(epochs.tolist())) == 21  # every length 0..20 occurs
    assert len({r.seed for r in recipes}) == 200
    for name, low, high in [("init_scale", 0.3, 3.0), ("lr", 1e-4, 3e-2), ("weight_decay", 1e-5, 1e-1)]:
        v = np.log([getattr(r, name) for r in recipes])
        span = np.log(high) - np.log(low)
        assert v.min() >= np.log(low) - 1e-3 and v.max() <= np.log(high) + 1e-3
        assert v.max() - v.min() > 0.8 * span, name  # log-uniform over the whole range, not a corner
    for name, low, high in [("dropout", 0.0, 0.5), ("data_fraction", 0.1, 1.0), ("label_noise", 0.0, 0.5)]:
        v = np.array([getattr(r, name) for r in recipes])
        assert low <= v.min() < low + 0.1 * (high - low) and high - 0.1 * (high - low) < v.max() <= high, name


def test_recipes_are_seeded_and_prefix_stable() -> None:
    assert zoo_recipe(7) == zoo_recipe(7)
    assert zoo_recipe(7, seed=1) != zoo_recipe(7)
    assert zoo_recipe(7) != zoo_recipe(8)


def test_recipe_validation() -> None:
    good = zoo_recipe(1)
    for bad in ({"epochs": -1}, {"data_fraction": 0.0}, {"init_scale": 0.0}, {"dropout": 1.0}):
        with pytest.raises(ConfigurationError, match="ZooRecipe received"):
            dataclasses.replace(good, **bad)


def test_unpretrained_member_is_the_scaled_default_init() -> None:
    x, y, _, _ = zoo_pretrain_data()
    recipe = dataclasses.replace(zoo_recipe(0), init_scale=2.5)
    assert recipe.epochs == 0
    member = pretrain_zoo_member(recipe, x, y)
    torch.manual_seed(recipe.seed)
    ref = make(**ZOO_ARCH)
    for (name, p), q in zip(member.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), 2.5 * q.detach(), msg=name)


def test_pretraining_follows_the_recipe_and_is_deterministic() -> None:
    x, y, x_held, y_held = zoo_pretrain_data()
    good = ZooRecipe(seed=5, init_scale=1.0, lr=3e-3, weight_decay=1e-4, dropout=0.3, epochs=6, data_fraction=1.0,
                     label_noise=0.0)
    state = torch.random.get_rng_state()
    a, b = pretrain_zoo_member(good, x, y), pretrain_zoo_member(good, x, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name  # dropout > 0, yet repeatable
    assert all(m.p == 0.0 for m in a.modules() if isinstance(m, torch.nn.Dropout))  # members ship without dropout
    noisy = dataclasses.replace(good, label_noise=1.0)
    untrained = dataclasses.replace(good, epochs=0)
    acc_good = zoo_pretrain_acc(a, x_held, y_held)
    acc_noisy = zoo_pretrain_acc(pretrain_zoo_member(noisy, x, y), x_held, y_held)
    acc_untrained = zoo_pretrain_acc(pretrain_zoo_member(untrained, x, y), x_held, y_held)
    assert acc_good > 0.8 and acc_noisy < 0.5 and acc_untrained < 0.3
