"""warmup_cosine at its edge points, against Optax's formula, and across a state_dict round trip."""

from __future__ import annotations

import math

import pytest
import torch

from fms_lightning.optim import warmup_cosine
from fms_lightning.optim.schedule import warmup_cosine_multiplier


def _opt(lr: float = 2.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _lrs(base: float, warmup: int, total: int, n: int) -> list[float]:
    """The lr used by updates t = 1..n, read from the optimizer the way a training loop sees it."""
    opt = _opt(base)
    sched = warmup_cosine(opt, warmup_steps=warmup, total_steps=total)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_edge_points() -> None:
    base, W, T = 2.0, 4, 20
    lrs = _lrs(base, W, T, T + 6)
    s = lambda k: lrs[k] / base  # noqa: E731  (update t = k + 1 uses s(k))
    assert lrs[0] == 0.0  # the first update has learning rate 0
    assert s(W - 1) == pytest.approx((W - 1) / W, abs=1e-15)
    assert s(W) == pytest.approx(1.0, abs=1e-15)  # peak right after warmup
    assert s(T) == pytest.approx(0.0, abs=1e-15)
    assert s(T + 5) == 0.0 or s(T + 5) == pytest.approx(0.0, abs=1e-15)
    # Never rises again after T (CosineAnnealingLR would).
    assert max(lrs[T:]) <= 1e-15


@pytest.mark.parametrize(("W", "T"), [(0, 1), (0, 10), (3, 10), (10, 10), (7, 100)])
def test_matches_optax_formula_everywhere(W: int, T: int) -> None:
    base = 0.5
    got = _lrs(base, W, T, T + 5)
    C = max(T - W, 1)
    for k, lr in enumerate(got):
        if k < W:
            expected = k / W
        else:
            expected = 0.5 * (1 + math.cos(math.pi * min(k - W, C) / C))
        assert lr == pytest.approx(base * expected, abs=1e-15), k
        assert warmup_cosine_multiplier(k, W, T) == pytest.approx(expected, abs=1e-15)


def test_warmup_fraction_uses_int_of_fraction_times_total() -> None:
    opt = _opt()
    sched = warmup_cosine(opt, warmup_fraction=0.1, total_steps=57)
    assert sched.warmup_steps == 5  # int(5.7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": 11, "total_steps": 10}, "must not exceed"),
        ({"warmup_steps": 0, "total_steps": 0}, "positive"),
        ({"warmup_steps": -1, "total_steps": 10}, ">= 0"),
        ({"total_steps": 10}, "exactly one"),
        ({"warmup_steps": 1, "warmup_fraction": 0.1, "total_steps": 10}, "exactly one"),
        ({"warmup_fraction": 1.5, "total_steps": 10}, "warmup_fraction"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(_opt(), **kwargs)


def test_state_dict_round_trip_resumes_exactly() -> None:
    base, W, T = 1.0, 3, 12
    reference = _lrs(base, W, T, T)
    opt = _opt(base)
    sched = warmup_cosine(opt, warmup_steps=W, total_steps=T)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    opt2 = _opt(base)
    sched2 = warmup_cosine(opt2, warmup_steps=1, total_steps=2)  # replaced by the loaded state
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    assert (sched2.warmup_steps, sched2.total_steps) == (W, T)
    for _ in range(T - 5):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert seen == reference
