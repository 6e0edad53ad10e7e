"""Linear warmup followed by cosine decay to zero, as Optax computes it.

Glossary:

- ``k``  number of scheduler steps taken so far (0 before the first update)
- ``W``  warmup steps, ``T`` total steps, ``C = max(T − W, 1)``
- ``s(k)`` multiplier on the base learning rate

::

    s(k) = k / W                                   for k < W
    s(k) = ½·(1 + cos(π·min(k − W, C) / C))        for k ≥ W

Update number ``t`` (1-based) uses ``base·s(t−1)``: the scheduler is stepped once
after every optimizer step, so the first update has learning rate 0 when
``W > 0``. For ``k ≥ T`` the multiplier stays at 0; unlike
``torch.optim.lr_scheduler.CosineAnnealingLR`` it never rises again.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fms_lightning.errors import ConfigurationError

__all__ = ["WarmupCosine", "warmup_cosine", "warmup_cosine_multiplier", "warmup_steps_from_fraction"]


def warmup_cosine_multiplier(k: int, warmup_steps: int, total_steps: int) -> float:
    """The multiplier ``s(k)`` on the base learning rate.

    Args:
        k: Scheduler steps taken so far (``k = t − 1`` for update ``t``).
        warmup_steps: ``W``.
        total_steps: ``T``.

    Returns:
        ``s(k)`` in ``[0, 1]``.
    """
    if k < warmup_steps:
        return k / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(k - warmup_steps, decay) / decay))


def warmup_steps_from_fraction(fraction: float, total_steps: int) -> int:
    """``W = int(fraction·T)``, the paper's warmup fraction turned into steps.

    Raises:
        ConfigurationError: If ``fraction`` is outside ``[0, 1]``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigurationError(f"warmup_fraction must be in [0, 1], got {fraction!r}.")
    return int(fraction * total_steps)


def _validate(warmup_steps: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ConfigurationError(
            f"total_steps must be a positive number of optimizer steps, got {total_steps!r}. "
            "Pass the length of training (e.g. trainer.estimated_stepping_batches)."
        )
    if warmup_steps < 0:
        raise ConfigurationError(f"warmup_steps must be >= 0, got {warmup_steps!r}.")
    if warmup_steps > total_steps:
        raise ConfigurationError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps}); "
            "shorten the warmup or lengthen training."
        )


class WarmupCosine(LRScheduler):
    """A torch LR scheduler for linear warmup then cosine decay to zero.

    Step it once after every optimizer step. Use :func:`warmup_cosine` to build one.

    Args:
        optimizer: The wrapped optimizer; each group's initial ``lr`` is its base rate.
        warmup_steps: ``W`` (>= 0).
        total_steps: ``T`` (> 0, >= ``W``).
        last_epoch: Index of the last step taken, as for other torch schedulers.

    Raises:
        ConfigurationError: (a ``ValueError``) when ``T <= 0``, ``W < 0`` or ``W > T``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, last_epoch: int = -1) -> None:
        warmup_steps, total_steps = int(warmup_steps), int(total_steps)
        _validate(warmup_steps, total_steps)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # noqa: D102 (torch's contract)
        s = warmup_cosine_multiplier(self.last_epoch, self.warmup_steps, self.total_steps)
        return [base * s for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def warmup_cosine(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float | None = None,
) -> WarmupCosine:
    """Linear warmup then cosine decay to zero (Optax's ``warmup_cosine_decay_schedule``).

    Give exactly one of ``warmup_steps`` and ``warmup_fraction``; with a fraction,
    ``W = int(fraction·T)``.

    Args:
        optimizer: The optimizer whose groups' ``lr`` are the peak rates.
        total_steps: ``T``, the number of optimizer steps in the whole run.
        warmup_steps: ``W``.
        warmup_fraction: The paper's warmup fraction of ``T``.

    Returns:
        A :class:`WarmupCosine` scheduler, stepped once per optimizer step.

    Raises:
        ConfigurationError: For ``T <= 0``, ``W < 0``, ``W > T``, or when both
            or neither of the warmup arguments are given.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> sched = warmup_cosine(opt, warmup_steps=2, total_steps=10)
    >>> [round(g["lr"], 3) for g in opt.param_groups]
    [0.0]
    """
    if (warmup_steps is None) == (warmup_fraction is None):
        raise ConfigurationError(
            "Give exactly one of warmup_steps and warmup_fraction "
            f"(got warmup_steps={warmup_steps!r}, warmup_fraction={warmup_fraction!r})."
        )
    if warmup_steps is None:
        assert warmup_fraction is not None  # for type checkers; checked above
        warmup_steps = warmup_steps_from_fraction(warmup_fraction, total_steps)
    return WarmupCosine(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
