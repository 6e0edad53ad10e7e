"""Eq. 3 computed directly equals gpytorch's exact marginal log likelihood, value and gradient."""

from __future__ import annotations

import math
import warnings

import gpytorch
import pytest
import torch
from linear_operator.utils.errors import NotPSDError

from fms_lightning.surrogate.dataset import InputLayout
from fms_lightning.surrogate.features import FeatureExtractor
from fms_lightning.surrogate.gp import DeepKernelGP, Kernel
from fms_lightning.surrogate.exact import _cholesky, eq3_loss, neg_mll, posterior, supports_direct


def _model(kernel: Kernel, extractor: bool, n: int = 14, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lay = InputLayout(n_hp=3, max_epochs=5)
    x = torch.rand(n, lay.width, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    ext = FeatureExtractor(lay) if extractor else None
    dims = ext.out_features if ext is not None else lay.width
    model = DeepKernelGP(x, y, gpytorch.likelihoods.GaussianLikelihood(), ext, kernel, dims).double()
    with torch.no_grad():  # away from the default initialisation
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.train()
    return model, x, y


def _gpytorch_loss(model, x, y):
    with gpytorch.settings.fast_computations(False, False, False):
        return -gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)(model(x), y)


@pytest.mark.parametrize("kernel", [Kernel.MATERN, Kernel.RBF])
@pytest.mark.parametrize("extractor", [True, False])
def test_value_and_gradient_equal_gpytorch(kernel, extractor):
    model, x, y = _model(kernel, extractor)
    assert supports_direct(model)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = _gpytorch_loss(model, x, y)
    ref_grad = torch.autograd.grad(ref, params)
    ours = neg_mll(model, x, y)
    grad = torch.autograd.grad(ours, params)
    assert float(ours.detach()) == pytest.approx(float(ref), rel=1e-12, abs=1e-12)
    for a, b in zip(grad, ref_grad):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_reference_value_of_eq3_on_a_two_point_rbf():
    """A hand-computed 2x2 case: K = s exp(-d^2/(2l^2)) + σ^2 I, L = [y'K^-1 y + log|K| + 2 log 2π] / 4."""
    model, _, _ = _model(Kernel.RBF, extractor=False, n=2)
    x = torch.zeros(2, model.train_inputs[0].shape[1], dtype=torch.float64)
    x[1, 0] = 1.0
    y = torch.tensor([0.5, -1.0], dtype=torch.float64)
    with torch.no_grad():
        model.covar_module.base_kernel.lengthscale = torch.full_like(model.covar_module.base_kernel.lengthscale, 2.0)
        model.covar_module.outputscale = torch.tensor(1.5, dtype=torch.float64)
        model.likelihood.noise = torch.tensor([0.1], dtype=torch.float64)
        model.mean_module.constant.fill_(0.25)
    k01 = 1.5 * math.exp(-1.0 / 8.0)
    a, b = 1.5 + 0.1, k01
    det = a * a - b * b
    r = [0.25, -1.25]
    quad = (a * r[0] ** 2 - 2 * b * r[0] * r[1] + a * r[1] ** 2) / det
    expected = 0.5 * (quad + math.log(det) + 2 * math.log(2 * math.pi)) / 2
    assert float(neg_mll(model, x, y)) == pytest.approx(expected, rel=1e-10)


def test_other_models_fall_back_to_gpytorch():
    model, x, y = _model(Kernel.MATERN, extractor=False)
    model.covar_module.base_kernel.register_prior(
        "ls_prior", gpytorch.priors.GammaPrior(3.0, 6.0), lambda m: m.lengthscale, lambda m, v: m._set_lengthscale(v)
    )
    assert not supports_direct(model)
    assert float(eq3_loss(model)(x, y)) == pytest.approx(float(_gpytorch_loss(model, x, y)), rel=1e-12)


def test_cholesky_adds_gpytorchs_jitter_to_a_singular_matrix_and_refuses_an_indefinite_one():
    from linear_operator.utils.cholesky import psd_safe_cholesky

    singular = torch.ones(3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(_cholesky(singular), psd_safe_cholesky(singular))
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    with pytest.raises(NotPSDError, match="not positive definite"):
        _cholesky(indefinite)


@pytest.mark.parametrize("kernel", [Kernel.MATERN, Kernel.RBF])
@pytest.mark.parametrize("extractor", [True, False])
def test_posterior_equals_gpytorchs_exact_prediction(kernel, extractor):
    model, x, y = _model(kernel, extractor)
    rows = torch.rand(23, x.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model.eval()
    with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False):
        model.set_train_data(x, y, strict=False)
        ref = model(rows)
        mean, var = posterior(model, x, y, rows)
    assert torch.allclose(mean, ref.mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(var, ref.variance, rtol=1e-8, atol=1e-12)
    at_train, var_train = posterior(model, x, y, x)  # little noise: the posterior nearly interpolates
    assert torch.all(var_train < var.mean())
