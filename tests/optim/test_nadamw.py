"""NAdamW against the issue's reference values and an independent transcription of the equations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fms_lightning.errors import ConfigurationError, FMSError
from fms_lightning.optim import NADAMW_LIST, NAdamW

REF_LR = 0.007188680089024849
REF_WD = 0.020932289532959312
REF_BETAS = (0.9521079797438937, 0.9545645606521953)
REF_THETA = {
    "optax": [0.9891546862504405, 0.9906720567473777, 0.9871670103901715],
    "algoperf": [0.9858164449820669, 0.9868569448800242, 0.9827714491843315],
}


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("variant", ["optax", "algoperf"])
def test_reference_values(variant: str, foreach: bool) -> None:
    theta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = NAdamW([theta], lr=REF_LR, betas=REF_BETAS, eps=1e-8, weight_decay=REF_WD, variant=variant, foreach=foreach)
    got = []
    for g in (0.5, -0.3, 0.2):
        theta.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        got.append(theta.item())
    for a, b in zip(got, REF_THETA[variant]):
        assert abs(a - b) <= 1e-12, (got, REF_THETA[variant])


def _transcribed(theta0, grads, lrs, beta1, beta2, eps, wd, variant):
    """The issue's equations in float64 Python scalars, one element at a time."""
    out = []
    for th0, gs in zip(theta0, grads):
        th, m, v = th0, 0.0, 0.0
        for t, (g, lr) in enumerate(zip(gs, lrs), start=1):
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            if variant == "optax":
                m_hat = beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (1 - beta1**t)
                d = m_hat / (math.sqrt(v / (1 - beta2**t)) + eps)
            else:
                m_hat = (beta1 * m + (1 - beta1) * g) / (1 - beta1**t)
                d = m_hat / (math.sqrt(v) / math.sqrt(1 - beta2**t) + eps)
            th = th - lr * (d + wd * th)
        out.append(th)
    return out


@pytest.mark.parametrize("variant", ["optax", "algoperf"])
@pytest.mark.parametrize("rank", range(1, 6))
def test_matches_transcription_over_100_random_steps(rank: int, variant: str) -> None:
    point = NADAMW_LIST[rank - 1]
    gen = torch.Generator().manual_seed(rank)
    n, steps = 7, 100
    theta0 = torch.randn(n, generator=gen, dtype=torch.float64)
    grads = torch.randn(steps, n, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1, n, dtype=torch.float64)
    # A varying learning rate, as a scheduler would set it, to check that η_t scales the decay.
    lrs = [point.lr * (0.5 + 0.5 * math.cos(k / 17.0)) for k in range(steps)]
    expected = _transcribed(theta0.tolist(), grads.T.tolist(), lrs, point.beta1, point.beta2, 1e-8, point.weight_decay, variant)
    for foreach in (False, True):
        theta = theta0.clone().requires_grad_(True)
        opt = NAdamW([theta], lr=point.lr, betas=(point.beta1, point.beta2), weight_decay=point.weight_decay,
                     variant=variant, foreach=foreach)
        for k in range(steps):
            opt.param_groups[0]["lr"] = lrs[k]
            theta.grad = grads[k].clone()
            opt.step()
        torch.testing.assert_close(theta.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)


def test_is_not_torch_nadam() -> None:
    # Guards against someone "simplifying" to torch.optim.NAdam, whose momentum schedule differs.
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours = NAdamW([a], lr=1e-2)
    theirs = torch.optim.NAdam([b], lr=1e-2)
    for g in (0.5, -0.3, 0.2):
        a.grad = torch.tensor([g], dtype=torch.float64)
        b.grad = torch.tensor([g], dtype=torch.float64)
        ours.step()
        theirs.step()
    assert abs(a.item() - b.item()) > 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_equals_single_tensor_with_param_groups(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)
    twin = copy.deepcopy(model)

    def groups(m):
        return [
            {"params": m[0].parameters(), "lr": 3e-3, "weight_decay": 0.1},
            {"params": m[2].parameters(), "lr": 1e-3, "betas": (0.8, 0.99)},
        ]

    o1 = NAdamW(groups(model), foreach=False)
    o2 = NAdamW(groups(twin), foreach=True)
    x = torch.randn(16, 5, dtype=dtype)
    for _ in range(5):
        for m, o in ((model, o1), (twin, o2)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def test_state_dict_round_trip_resumes_exactly() -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = NAdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    x = torch.randn(8, 4)

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    model2 = copy.deepcopy(model)
    opt2 = NAdamW(model2.parameters(), lr=123.0)  # hyperparameters come back from the state dict
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["variant"] == "optax"
    for _ in range(4):
        step(model, opt)
        step(model2, opt2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_parameter_without_grad_is_untouched_and_steps_counted_per_parameter() -> None:
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = NAdamW([a, b], lr=0.1, weight_decay=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3))
    b.grad = torch.ones(3)
    a.grad = torch.ones(3)
    opt.step()
    assert opt.state[a]["step"].item() == 2 and opt.state[b]["step"].item() == 1
    # b's first step must equal a's first step (same grad, same start).
    a2 = torch.ones(3, requires_grad=True)
    o = NAdamW([a2], lr=0.1, weight_decay=0.1)
    a2.grad = torch.ones(3)
    o.step()
    torch.testing.assert_close(b, a2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (1.0, 0.999)}, r"beta1.*\[0.0, 1.0\)"),
        ({"betas": (0.9, -0.1)}, "beta2"),
        ({"betas": (0.9, float("nan"))}, "beta2"),
        ({"variant": "pytorch"}, "variant"),
    ],
)
def test_invalid_values_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        NAdamW([torch.zeros(1, requires_grad=True)], **kwargs)
    assert isinstance(info.value, FMSError)


def test_invalid_param_group_is_rejected() -> None:
    opt = NAdamW([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ConfigurationError, match="beta1"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "betas": (1.5, 0.9)})


def test_sparse_gradient_raises_clear_error() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = NAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ConfigurationError, match="sparse"):
        opt.step()


def test_closure_is_evaluated() -> None:
    w = torch.tensor([2.0], requires_grad=True)
    opt = NAdamW([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(4.0)
    assert w.item() < 2.0
