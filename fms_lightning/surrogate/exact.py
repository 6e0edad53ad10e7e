"""The exact GP's two computations in plain torch: eq. 3 for fitting, the posterior for predicting.

The surrogate's fits take hundreds of full-batch Adam steps on a handful of rows, where
gpytorch's general machinery (lazy operators, prior and loss-term bookkeeping, the
distribution objects) costs more than the arithmetic. :func:`neg_mll` computes the same
quantity directly for the kernels the surrogate uses::

    L = 1/(2n) [ (y - m)^T (K + σ² I)^{-1} (y - m) + log|K + σ² I| + n log 2π ]

with ``K = s · k(ψ(X), ψ(X))``, ``k`` Matérn-5/2 or RBF with ARD lengthscales, ``m`` the
constant mean and ``σ²`` the likelihood's noise. The kernel distances are gpytorch's own
functions, and a Cholesky that fails gets the same escalating jitter as gpytorch's
``psd_safe_cholesky`` (starting from ``gpytorch.settings.cholesky_jitter``), so the value
and its gradient agree with ``-ExactMarginalLogLikelihood(likelihood, model)(model(X), y)``
to rounding (``tests/surrogate/test_exact.py``). :func:`posterior` likewise gives
gpytorch's exact predictive mean and variance of the latent f, from one Cholesky of the
training block and the cross-covariances only. A model these do not cover (another
kernel, priors, added loss terms) is evaluated by gpytorch instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gpytorch
import torch
from gpytorch.kernels.kernel import dist, sq_dist
from linear_operator.utils.errors import NotPSDError

__all__ = ["neg_mll", "eq3_loss", "exact_settings", "posterior", "supports_direct"]


def supports_direct(model: gpytorch.models.ExactGP) -> bool:
    """Whether :func:`neg_mll` computes ``model``'s eq. 3 itself (else gpytorch does)."""
    scale = getattr(model, "covar_module", None)
    if not isinstance(scale, gpytorch.kernels.ScaleKernel):
        return False
    base = scale.base_kernel
    kernel_ok = isinstance(base, gpytorch.kernels.RBFKernel) or (
        isinstance(base, gpytorch.kernels.MaternKernel) and base.nu == 2.5
    )
    return (
        kernel_ok
        and type(model.mean_module) is gpytorch.means.ConstantMean
        and type(model.likelihood) is gpytorch.likelihoods.GaussianLikelihood
        and not any(True for _ in model.named_priors())
        and not any(True for _ in model.named_added_loss_terms())
    )


def _kernel(model: gpytorch.models.ExactGP, z: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
    """``s · k(z, z2)`` as a dense tensor (gpytorch's formulas, including its centring); ``z2`` default ``z``."""
    base = model.covar_module.base_kernel
    same = z2 is None
    z2 = z if z2 is None else z2
    if isinstance(base, gpytorch.kernels.MaternKernel):
        centre = z.mean(dim=-2, keepdim=True)
        u, u2 = (z - centre).div(base.lengthscale), (z2 - centre).div(base.lengthscale)
        d = dist(u, u2, x1_eq_x2=same)
        k = (math.sqrt(5) * d).add(1).add(5.0 / 3.0 * d**2) * torch.exp(-math.sqrt(5) * d)
    else:
        u, u2 = z.div(base.lengthscale), z2.div(base.lengthscale)
        k = sq_dist(u, u2, x1_eq_x2=same).div_(-2).exp_()
    return model.covar_module.outputscale * k


def _cholesky(a: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of ``a``, adding jitter to the diagonal as gpytorch's ``psd_safe_cholesky`` does."""
    low, info = torch.linalg.cholesky_ex(a)
    if not torch.any(info):
        return low
    if torch.isnan(a).any():
        raise NotPSDError("The GP's covariance has NaN entries.")
    jitter = gpytorch.settings.cholesky_jitter.value(a.dtype)
    tries = gpytorch.settings.cholesky_max_tries.value()
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for i in range(tries):
        low, info = torch.linalg.cholesky_ex(a + jitter * 10**i * eye)
        if not torch.any(info):
            return low
    raise NotPSDError(f"The GP's covariance is not positive definite even with jitter {jitter * 10 ** (tries - 1):.1e}.")


def eq3_loss(model: gpytorch.models.ExactGP) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(x, y)``: eq. 3 for ``model``, with the check of :func:`supports_direct` done once (for a fit loop)."""
    if supports_direct(model):
        return lambda x, y: _direct(model, x, y)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    return lambda x, y: -mll(model(x), y)


def neg_mll(model: gpytorch.models.ExactGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per data point for a model in training mode, on its training data ``(x, y)``.

    Args:
        model: A ``DeepKernelGP`` (``model.extractor`` is ψ or None).
        x: Training rows `(n, width)`, already prepared.
        y: Standardised labels `(n,)`.

    Returns:
        The scalar loss, differentiable in every parameter.

    Raises:
        NotPSDError: If ``K + σ² I`` is not positive definite even with jitter.
    """
    return eq3_loss(model)(x, y)


def _direct(model: gpytorch.models.ExactGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    extractor = getattr(model, "extractor", None)
    z = extractor(x) if extractor is not None else x
    n = y.shape[-1]
    a = _kernel(model, z)
    a = a + torch.diag_embed(model.likelihood.noise.expand(n))
    low = _cholesky(a)
    r = (y - model.mean_module.constant).unsqueeze(-1)
    alpha = torch.cholesky_solve(r, low)
    inv_quad = (r * alpha).sum()
    logdet = 2.0 * low.diagonal(dim1=-2, dim2=-1).log().sum()
    return 0.5 * (inv_quad + logdet + n * math.log(2 * math.pi)) / n


def posterior(
    model: gpytorch.models.ExactGP, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the latent f at ``rows`` given the training data ``(x, y)`` (eval mode).

    ``mean = m + K_*^T (K + σ² I)^{-1} (y - m)``, ``var = s - diag(K_*^T (K + σ² I)^{-1} K_*)``,
    computed with one forward of ψ over the training rows and ``rows`` together (as gpytorch
    does) and one Cholesky; equal to ``model(rows)`` of gpytorch's exact prediction to rounding.
    A model :func:`supports_direct` does not cover is evaluated by gpytorch.

    Raises:
        NotPSDError: If ``K + σ² I`` is not positive definite even with jitter.
    """
    if not supports_direct(model):
        model.set_train_data(x, y, strict=False)
        post = model(rows)
        return post.mean, post.variance
    extractor = getattr(model, "extractor", None)
    both = torch.cat([x, rows])
    z = extractor(both) if extractor is not None else both
    n = x.shape[0]
    k = _kernel(model, z, z[:n])  # (n + m, n): training block, then the cross block
    k_train = k[:n] + torch.diag_embed(model.likelihood.noise.expand(n))
    k_cross = k[n:].transpose(-1, -2)
    low = _cholesky(k_train)
    mean0 = model.mean_module.constant
    alpha = torch.cholesky_solve((y - mean0).unsqueeze(-1), low)
    mean = mean0 + (k_cross * alpha).sum(0)
    v = torch.linalg.solve_triangular(low, k_cross, upper=False)
    var = model.covar_module.outputscale - (v * v).sum(0)  # k(r, r) = s for these stationary kernels
    return mean, var


class exact_settings:
    """Context for gpytorch: exact Cholesky solves (no CG), with an optional extra jitter (retries)."""

    def __init__(self, jitter: float | None) -> None:
        ctx = [gpytorch.settings.max_cholesky_size(100_000), gpytorch.settings.fast_computations(False, False, False)]
        if jitter is not None:
            ctx.append(gpytorch.settings.cholesky_jitter(float_value=jitter, double_value=jitter))
        self._ctx = ctx

    def __enter__(self) -> None:
        for c in self._ctx:
            c.__enter__()

    def __exit__(self, *exc: object) -> None:
        for c in reversed(self._ctx):
            c.__exit__(*exc)
