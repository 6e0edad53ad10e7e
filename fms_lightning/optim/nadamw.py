"""NAdamW: Nesterov Adam with decoupled weight decay, as the NAdamW-lists paper used it.

Glossary (t counts updates from 1; all quantities are per parameter tensor):

- ``g_t``   gradient at ``θ_{t-1}``
- ``m_t``   first moment,  ``β1·m_{t-1} + (1−β1)·g_t``
- ``v_t``   second moment, ``β2·v_{t-1} + (1−β2)·g_t²``
- ``η_t``   the param group's current (scheduled) learning rate
- ``λ``     weight decay, decoupled and scaled by ``η_t``

``variant="optax"`` (default; Optax's ``nadamw``, which the paper used)::

    m̂_t = β1·m_t / (1−β1^{t+1}) + (1−β1)·g_t / (1−β1^t)
    v̂_t = v_t / (1−β2^t)
    d_t = m̂_t / (√v̂_t + ε)

``variant="algoperf"`` (the AlgoPerf / init2winit baseline)::

    m̂_t = (β1·m_t + (1−β1)·g_t) / (1−β1^t)
    d_t = m̂_t / (√v_t / √(1−β2^t) + ε)

Both update ``θ_t = θ_{t-1} − η_t·(d_t + λ·θ_{t-1})``.

The two variants differ only in the coefficient on ``m_t``; both are written here
as ``d_t = (c1·m_t + c2·g_t) / (√v_t / √(1−β2^t) + ε)``, which is what the
single-tensor and the multi-tensor (``foreach``) paths compute.

``torch.optim.NAdam`` is a different rule (Dozat's momentum-decay schedule) and is
deliberately not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from fms_lightning.errors import ConfigurationError

__all__ = ["NAdamW", "nadamw_coefficients"]

Variant = Literal["optax", "algoperf"]
_VARIANTS: tuple[str, ...] = ("optax", "algoperf")


def nadamw_coefficients(step: int, beta1: float, beta2: float, variant: Variant) -> tuple[float, float, float]:
    """Scalar coefficients of one NAdamW update.

    Args:
        step: The 1-based update number ``t``.
        beta1: ``β1``.
        beta2: ``β2``.
        variant: ``"optax"`` or ``"algoperf"``.

    Returns:
        ``(c1, c2, s2)`` such that ``d_t = (c1·m_t + c2·g_t) / (√v_t / s2 + ε)``,
        where ``s2 = √(1−β2^t)``.

    Raises:
        ConfigurationError: For an unknown variant or a step below 1.
    """
    if step < 1:
        raise ConfigurationError(f"NAdamW step must be >= 1, got {step}.")
    bc1 = 1.0 - beta1**step
    if variant == "optax":
        c1 = beta1 / (1.0 - beta1 ** (step + 1))
    elif variant == "algoperf":
        c1 = beta1 / bc1
    else:
        raise ConfigurationError(f"Unknown NAdamW variant {variant!r}; expected one of {_VARIANTS}.")
    c2 = (1.0 - beta1) / bc1
    s2 = math.sqrt(1.0 - beta2**step)
    return c1, c2, s2


def _check_range(name: str, value: float, *, low: float, high: float | None = None, high_open: bool = True) -> None:
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok or math.isnan(value):
        upper = "∞)" if high is None else (f"{high})" if high_open else f"{high}]")
        raise ConfigurationError(f"Invalid NAdamW {name}: {value!r}; expected a value in [{low}, {upper}.")


class NAdamW(Optimizer):
    """NAdamW with decoupled, learning-rate-scaled weight decay.

    See the module docstring for the exact update rules of both variants.

    Args:
        params: Parameters or param-group dicts, as for any ``torch.optim.Optimizer``.
        lr: Learning rate ``η`` (>= 0). Schedulers change each group's ``"lr"``.
        betas: ``(β1, β2)``, each in ``[0, 1)``.
        eps: ``ε`` added to the denominator (>= 0).
        weight_decay: ``λ`` (>= 0). The decay step is ``η_t·λ·θ_{t-1}``.
        variant: ``"optax"`` (default, the paper's rule) or ``"algoperf"``.
        foreach: Use the multi-tensor (``torch._foreach_*``) path. ``None``
            (default) uses it when every parameter of the group is on an
            accelerator, and the per-tensor path on CPU, as torch's own
            optimizers do. Both paths compute the same update.

    Raises:
        ConfigurationError: (a ``ValueError``) for an out-of-range value or an
            unknown variant; also at ``step()`` for sparse or complex gradients.

    >>> model = torch.nn.Linear(4, 2)
    >>> opt = NAdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    >>> model(torch.randn(8, 4)).sum().backward()
    >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        variant: Variant = "optax",
        foreach: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor):
            lr = float(lr)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, variant=variant, foreach=foreach)
        self._validate_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_group(group)

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        _check_range("lr", float(group["lr"]), low=0.0)
        betas = group["betas"]
        if len(betas) != 2:
            raise ConfigurationError(f"NAdamW betas must be a pair (beta1, beta2), got {betas!r}.")
        _check_range("beta1", float(betas[0]), low=0.0, high=1.0)
        _check_range("beta2", float(betas[1]), low=0.0, high=1.0)
        _check_range("eps", float(group["eps"]), low=0.0)
        _check_range("weight_decay", float(group["weight_decay"]), low=0.0)
        if group["variant"] not in _VARIANTS:
            raise ConfigurationError(
                f"Unknown NAdamW variant {group['variant']!r}; expected one of {_VARIANTS} "
                "('optax' is the rule the NAdamW-lists paper used)."
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("variant", "optax")
            group.setdefault("foreach", None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102 (inherited)
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one update.

        Args:
            closure: Optional closure that re-evaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, if given.

        Raises:
            ConfigurationError: For sparse or complex gradients.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, ms, vs, steps = self._collect(group)
            if not params:
                continue
            use_foreach = group["foreach"]
            if use_foreach is None:
                # As torch does: the multi-tensor path pays off on accelerators; on CPU
                # the per-tensor path measured faster (scripts/bench_nadamw.py).
                use_foreach = all(p.device.type != "cpu" for p in params)
            # Parameters of one group can disagree on their step count (a parameter
            # that had no gradient on some step); bucket by step so the scalar
            # coefficients are exact for each.
            buckets: dict[int, list[int]] = {}
            for i, s in enumerate(steps):
                buckets.setdefault(s, []).append(i)
            for step, idx in buckets.items():
                sel = lambda xs: [xs[i] for i in idx]  # noqa: E731
                fn = _foreach_update if use_foreach else _single_tensor_update
                fn(sel(params), sel(grads), sel(ms), sel(vs), _scalars(group, step))
        return loss

    def _collect(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[int]]:
        params, grads, ms, vs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ConfigurationError(
                    "NAdamW does not support sparse gradients (got one for a parameter of shape "
                    f"{tuple(p.shape)}). Use dense gradients, e.g. nn.Embedding(..., sparse=False)."
                )
            if torch.is_complex(p):
                raise ConfigurationError(
                    f"NAdamW does not support complex parameters (got dtype {p.dtype}); "
                    "optimise torch.view_as_real(param) instead."
                )
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float64)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_sq"])
            steps.append(int(state["step"].item()))
        return params, grads, ms, vs, steps


class _Scalars(NamedTuple):
    """The per-step scalars of one update, shared by both code paths."""

    beta1: float
    beta2: float
    eps: float
    decay: float  # 1 − η·λ, the decoupled weight-decay factor on θ_{t-1}
    m_ratio: float  # c1 / c2: c1·m + c2·g = c2·(g + (c1/c2)·m)
    s2: float  # √(1−β2^t)
    step_size: float  # −η·c2 (c2 > 0 because β1 < 1)


def _scalars(group: dict[str, Any], step: int) -> _Scalars:
    beta1, beta2 = group["betas"]
    lr, wd = float(group["lr"]), float(group["weight_decay"])
    c1, c2, s2 = nadamw_coefficients(step, beta1, beta2, group["variant"])
    return _Scalars(beta1, beta2, float(group["eps"]), 1.0 - lr * wd, c1 / c2, s2, -lr * c2)


def _single_tensor_update(
    params: list[Tensor], grads: list[Tensor], ms: list[Tensor], vs: list[Tensor], k: _Scalars
) -> None:
    for p, g, m, v in zip(params, grads, ms, vs):
        m.lerp_(g, 1.0 - k.beta1)
        v.mul_(k.beta2).addcmul_(g, g, value=1.0 - k.beta2)
        numer = g.add(m, alpha=k.m_ratio)
        denom = v.sqrt().div_(k.s2).add_(k.eps)
        if k.decay != 1.0:
            p.mul_(k.decay)
        p.addcdiv_(numer, denom, value=k.step_size)


def _foreach_update(
    params: list[Tensor], grads: list[Tensor], ms: list[Tensor], vs: list[Tensor], k: _Scalars
) -> None:
    torch._foreach_lerp_(ms, grads, 1.0 - k.beta1)
    torch._foreach_mul_(vs, k.beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - k.beta2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, k.s2)
    torch._foreach_add_(denom, k.eps)
    if k.decay != 1.0:
        torch._foreach_mul_(params, k.decay)
    # −η·(c1·m + c2·g)/denom as two in-place addcdivs: no numerator buffer to allocate,
    # which on CPU costs more than the extra pass (scripts/bench_nadamw.py).
    torch._foreach_addcdiv_(params, ms, denom, value=k.step_size * k.m_ratio)
    torch._foreach_addcdiv_(params, grads, denom, value=k.step_size)
