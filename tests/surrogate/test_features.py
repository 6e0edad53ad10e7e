from __future__ import annotations

import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.dataset import InputLayout
from fms_lightning.surrogate.features import FeatureExtractor


@pytest.mark.parametrize("n_weight", [0, 6])
@pytest.mark.parametrize("learning_curve", [True, False])
@pytest.mark.parametrize("max_epochs", [1, 2, 20])
def test_shapes_and_a6_architecture(n_weight, learning_curve, max_epochs):
    lay = InputLayout(n_hp=4, max_epochs=max_epochs, n_weight=n_weight)
    fx = FeatureExtractor(lay, learning_curve=learning_curve).double()
    out = fx(torch.rand(7, lay.width, dtype=torch.float64))
    assert out.shape == (7, 10)
    assert [m.out_features for m in fx.hp_net if isinstance(m, torch.nn.Linear)] == [64, 128]
    assert fx.use_curve == (learning_curve and max_epochs > 1)
    if fx.use_curve:
        convs = [m for m in fx.curve_net if isinstance(m, torch.nn.Conv1d)]
        assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(4, 3), (8, 3)]
    assert hasattr(fx, "weight_net") == bool(n_weight)


def test_no_cnn_ablation_ignores_the_curve():
    lay = InputLayout(n_hp=2, max_epochs=6)
    fx = FeatureExtractor(lay, learning_curve=False).double()
    a = torch.rand(3, lay.width, dtype=torch.float64)
    b = a.clone()
    b[:, lay.curve_slice] += 5.0
    assert torch.equal(fx(a), fx(b))


def test_invalid_width():
    with pytest.raises(ConfigurationError, match="out_features=0"):
        FeatureExtractor(InputLayout(n_hp=2, max_epochs=3), out_features=0)
