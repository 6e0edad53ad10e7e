from __future__ import annotations

import gpytorch
import pytest
import torch

from fms_lightning.errors import ConfigurationError, SurrogateError
from fms_lightning.surrogate import gp as gp_mod
from fms_lightning.surrogate.dataset import InputLayout
from fms_lightning.surrogate.gp import Kernel, Surrogate, SurrogateConfig


def _data(n: int = 30, seed: int = 0):
    lay = InputLayout(n_hp=2, max_epochs=4)
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, lay.width, dtype=torch.float64)
    x[:, :3] = torch.rand(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(6 * x[:, 0]) + x[:, 2]
    return lay, x, y


@pytest.mark.parametrize("kernel", ["rbf", "matern"])
@pytest.mark.parametrize("use_extractor", [True, False])
def test_fit_and_predict(kernel, use_extractor):
    lay, x, y = _data()
    s = Surrogate(lay, SurrogateConfig(kernel=kernel, use_extractor=use_extractor))
    assert s.fit(x, y, steps=60, from_scratch=True, seed=0) == 1
    base = s.model.covar_module.base_kernel
    assert isinstance(s.model.covar_module, gpytorch.kernels.ScaleKernel)
    assert isinstance(base, gpytorch.kernels.RBFKernel if kernel == "rbf" else gpytorch.kernels.MaternKernel)
    mean, std = s.predict(x[:5])
    assert mean.shape == std.shape == (5,)
    assert torch.all(std > 0)
    assert (mean - y[:5]).abs().mean() < 0.5


def test_labels_are_normalised():
    """Affine rescaling of labels rescales predictions exactly: the fit is scale-free."""
    lay, x, y = _data()
    a, b = Surrogate(lay), Surrogate(lay)
    a.fit(x, y, steps=30, from_scratch=True, seed=1)
    b.fit(x, 1e4 * y + 123.0, steps=30, from_scratch=True, seed=1)
    ma, sa = a.predict(x[:4])
    mb, sb = b.predict(x[:4])
    assert torch.allclose(mb, 1e4 * ma + 123.0, rtol=1e-6, atol=1e-3)
    assert torch.allclose(sb, 1e4 * sa, rtol=1e-6)


def test_seeded_init_is_deterministic_and_does_not_touch_global_rng():
    lay, x, y = _data()
    state = torch.get_rng_state()
    a, b = Surrogate(lay), Surrogate(lay)
    a.fit(x, y, steps=5, from_scratch=True, seed=7)
    b.fit(x, y, steps=5, from_scratch=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.predict(x[:3])[0], b.predict(x[:3])[0])


def test_fantasies_shrink_uncertainty_at_pending_points():
    lay, x, y = _data()
    s = Surrogate(lay)
    s.fit(x[:10], y[:10], steps=30, from_scratch=True, seed=0)
    pending = x[20:21]
    _, std0 = s.predict(pending)
    _, std1 = s.predict(pending, fantasy_rows=pending)
    assert std1.item() < std0.item()
    _, std2 = s.predict(pending)  # conditioning set restored
    assert std2.item() == pytest.approx(std0.item())


def test_cholesky_failure_retries_with_jitter_then_restarts(monkeypatch):
    lay, x, y = _data()
    s = Surrogate(lay)
    real = Surrogate._optimise
    calls = []

    def flaky(self, x_, y_, steps, jitter):
        calls.append(jitter)
        if len(calls) < 3:
            raise gp_mod._Retry("cholesky failed")
        return real(self, x_, y_, steps, jitter)

    monkeypatch.setattr(Surrogate, "_optimise", flaky)
    assert s.fit(x, y, steps=3, from_scratch=True, seed=0) == 3
    assert calls == [None, 1e-4, 1e-3]


def test_all_attempts_failing_raises_surrogate_error(monkeypatch):
    lay, x, y = _data()

    def broken(self, *a):
        raise gp_mod._Retry("always")

    monkeypatch.setattr(Surrogate, "_optimise", broken)
    with pytest.raises(SurrogateError, match="could not be fit"):
        Surrogate(lay).fit(x, y, steps=3, from_scratch=True, seed=0)


def test_state_round_trip():
    lay, x, y = _data()
    a = Surrogate(lay)
    a.fit(x, y, steps=10, from_scratch=True, seed=0)
    b = Surrogate(lay)
    b.load_state_dict(a.state_dict())
    b.fit(x, y, steps=0, from_scratch=False, seed=0)
    assert torch.allclose(a.predict(x[:3])[0], b.predict(x[:3])[0])


def test_config_validation():
    with pytest.raises(ConfigurationError, match="kernel='cosine'"):
        SurrogateConfig(kernel="cosine")
    with pytest.raises(ConfigurationError, match="lr=0"):
        SurrogateConfig(lr=0)
    assert SurrogateConfig(kernel="rbf").kernel is Kernel.RBF
