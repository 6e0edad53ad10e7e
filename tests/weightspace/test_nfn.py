"""Tests of fms_lightning/weightspace/nfn.py (FMS-NFN) and the chains it reads (_chain.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.examples.hub_models import DigitsConvNet
from fms_lightning.weightspace import NFNEncoder, check_same_architecture, parameter_graph
from fms_lightning.weightspace._chain import ChainSpec, chain_from_module, chain_from_state_dict
from fms_lightning.weightspace.nfn import NPLayer, invariant_pool
from tests.weightspace.zoo import ZOO_BY_NAME


def _randomize_norms(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    return model


def _cnn(bn: bool) -> nn.Module:
    norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), *norm(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), *norm(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4, 7), nn.ReLU(), nn.Linear(7, 5),
    )  # fmt: skip


def _mlp_ln() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


# name -> (build, input shape)
ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (ZOO_BY_NAME["mlp"].make, (4, 6)),
    "mlp_layernorm": (_mlp_ln, (4, 6)),
    "cnn": (lambda: _cnn(False), (2, 3, 8, 8)),
    "cnn_batchnorm": (lambda: _cnn(True), (2, 3, 8, 8)),
    "digits_zoo": (lambda: DigitsConvNet(c1=4, c2=8), (2, 1, 8, 8)),
}


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_norms(ARCHS[name][0]()).double().eval()


def _example(name: str) -> Tensor:
    return torch.randn(*ARCHS[name][1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def permute_hidden(model: nn.Module, spec: ChainSpec, seed: int) -> nn.Module:
    """A copy of ``model`` with every hidden neuron set randomly permuted (function-preserving)."""
    out = copy.deepcopy(model)
    sd = out.state_dict()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ly, nxt in zip(spec.layers[:-1], spec.layers[1:]):
            p = torch.randperm(ly.n_out, generator=gen)
            for key in (ly.weight, ly.bias, *ly.extras):
                if key:
                    sd[key].copy_(sd[key][p])
            w = sd[nxt.weight]
            grouped = w.reshape(nxt.n_out, nxt.n_in, -1)[:, p]  # conv -> flatten -> linear: groups of positions
            w.copy_(grouped.reshape(w.shape))
    return out


# -- invariance and sensitivity -------------------------------------------------------
@pytest.mark.parametrize("name", list(ARCHS))
def test_invariant_to_function_preserving_hidden_permutations(name):
    model = _build(name)
    enc = NFNEncoder(model, hidden=(8, 8), readout=(16,), out_dim=6).double()
    x = _example(name)
    for seed in (1, 2, 3):
        twin = permute_hidden(model, enc.spec, seed)
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
        with torch.no_grad():
            torch.testing.assert_close(model(x), twin(x), atol=1e-10, rtol=1e-10)  # the same function
            a, b = enc(model), enc(twin)
            c = enc(Batch.from_data_list([enc.inputs(twin), enc.inputs(model)]))
        assert a.shape == (1, 6) and a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(c, torch.cat([b, a]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(ARCHS))
def test_one_weight_changes_the_embedding(name):
    model = _build(name)
    enc = NFNEncoder(model, hidden=(8, 8), readout=(16,), out_dim=6).double()
    for layer in (enc.spec.layers[0], enc.spec.layers[-1]):
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.state_dict()[layer.weight].view(-1)[0] += 0.1
            a, b = enc(model), enc(changed)
        assert (a - b).abs().max() > 1e-6, layer.name


def test_input_and_output_neurons_are_not_interchangeable():
    """The IO encoding breaks the NP symmetry on inputs and outputs: only hidden neurons are symmetric."""
    model = _build("mlp")
    enc = NFNEncoder(model, hidden=(8, 8), out_dim=6).double()
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        swapped[4].weight.copy_(swapped[4].weight[[1, 0, 2]])  # swap two classes
        swapped[4].bias.copy_(swapped[4].bias[[1, 0, 2]])
        assert (enc(model) - enc(swapped)).abs().max() > 1e-6


# -- the NP layer ----------------------------------------------------------------------
def test_np_layer_is_equivariant_to_every_neuron_permutation():
    torch.manual_seed(0)
    sizes, wc, bc = [3, 4, 5, 2], [2, 3, 1], [1, 4, 2]  # n_0..n_L, c_i, cb_i
    layer = NPLayer(wc, bc, 7).double()
    ws = [torch.randn(2, sizes[i + 1], sizes[i], wc[i], dtype=torch.float64) for i in range(3)]
    bs = [torch.randn(2, sizes[i + 1], bc[i], dtype=torch.float64) for i in range(3)]
    perms = [torch.randperm(n) for n in sizes]  # inputs and outputs too: the NP group
    pws = [w[:, perms[i + 1]][:, :, perms[i]] for i, w in enumerate(ws)]
    pbs = [b[:, perms[i + 1]] for i, b in enumerate(bs)]
    out_w, out_b = layer(ws, bs)
    pout_w, pout_b = layer(pws, pbs)
    for i in range(3):
        assert out_w[i].shape == (2, sizes[i + 1], sizes[i], 7) and out_b[i].shape == (2, sizes[i + 1], 7)
        torch.testing.assert_close(pout_w[i], out_w[i][:, perms[i + 1]][:, :, perms[i]], atol=1e-12, rtol=0)
        torch.testing.assert_close(pout_b[i], out_b[i][:, perms[i + 1]], atol=1e-12, rtol=0)
    torch.testing.assert_close(invariant_pool(pout_w, pout_b), invariant_pool(out_w, out_b), atol=1e-12, rtol=0)
    # every term is used: a change in another layer's block reaches W'^(1) through the adjacent/global terms
    ws2 = [ws[0], ws[1], ws[2] + 1.0]
    assert not torch.allclose(layer(ws2, bs)[0][0], out_w[0])


# -- gradients -------------------------------------------------------------------------
def test_gradients_reach_every_parameter():
    models = [_build("cnn_batchnorm", seed) for seed in range(3)]
    enc = NFNEncoder(models[0], hidden=(8, 8), readout=(16,), out_dim=4).double()
    out = enc(Batch.from_data_list([enc.inputs(m) for m in models]))
    (out * torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(0))).sum().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


# -- the chains it reads, and refusals ----------------------------------------------------
def test_spec_of_the_zoo_hub_cnn():
    spec = NFNEncoder(DigitsConvNet(c1=4, c2=8)).spec
    assert [(ly.n_out, ly.n_in, ly.channels) for ly in spec.layers] == [(4, 1, 9), (8, 4, 9), (10, 8, 16)]
    assert spec.numel == 1626  # every parameter, exactly once
    assert chain_from_state_dict(DigitsConvNet(c1=4, c2=8).state_dict()) == spec


@pytest.mark.parametrize("name", list(ARCHS))
def test_a_state_dict_gives_the_same_chain_as_tracing(name):
    model = _build(name)
    assert chain_from_state_dict(model.state_dict()) == chain_from_module(model)


def test_batchnorm_without_affine_parameters_keeps_its_running_statistics():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, affine=False), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    spec = chain_from_module(model)
    assert spec.layers[0].extras == ("1.running_mean", "1.running_var") and spec.layers[1].channels == 9
    assert chain_from_state_dict(model.state_dict()) == spec


def test_batchnorm_parameters_are_bias_channels():
    spec = chain_from_module(_cnn(True))
    assert spec.layers[0].extras == ("1.weight", "1.bias", "1.running_mean", "1.running_var")
    assert spec.layers[0].bias_channels == 5 and spec.layers[-1].extras == ()


def test_refuses_a_residual_model():
    with pytest.raises(ConfigurationError, match=r"'add in layer1' combines the outputs of 'layer1.bn2' and 'stem.2'"):
        NFNEncoder(ZOO_BY_NAME["resnet"].build())
    with pytest.raises(ConfigurationError, match=r"'b' reads the output of 'x', which 'a' already read"):
        NFNEncoder(ZOO_BY_NAME["handwritten"].build())


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.attn(h, h, h)[0]


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_Attn(), r"'attn' is a MultiheadAttention"),
        (ZOO_BY_NAME["cnn"].make(), r"'3' is a grouped conv \(groups=2\)"),
        (nn.Sequential(nn.Linear(3, 4), nn.Embedding(4, 2)), r"'1' is a Embedding"),
        (nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4)), r"'1' is a GroupNorm"),
    ],
)
def test_refuses_other_layers_naming_them(model, match):
    with pytest.raises(ConfigurationError, match=match):
        NFNEncoder(model)


def test_refuses_attention_in_a_state_dict():
    with pytest.raises(ConfigurationError, match=r"'attn' holds 'attn.in_proj_weight'"):
        NFNEncoder(_Attn().state_dict())


def test_refuses_mixed_architectures_in_one_batch_naming_the_parameter():
    enc = NFNEncoder(_build("cnn"))
    wider = nn.Sequential(*list(_cnn(False).children())[:-1], nn.Linear(7, 6)).double()
    with pytest.raises(ConfigurationError, match=r"network #1 of the batch .* parameter '9.weight' has shape \(6, 7\), "
                                                 r"expected \(5, 7\)"):
        enc([_build("cnn", 1), wider])
    with pytest.raises(ConfigurationError, match=r"parameter '9.bias' \(5,\) is missing"):
        enc.inputs({k: v for k, v in _build("cnn").state_dict().items() if k != "9.bias"})
    with pytest.raises(IncompatibleWeightsError, match="not parameter_graph"):
        enc(parameter_graph(_build("cnn")))


def test_check_same_architecture_names_the_members_that_differ():
    a, b = DigitsConvNet(4, 8).state_dict(), DigitsConvNet(4, 8).state_dict()
    check_same_architecture({"a": a, "b": b})
    with pytest.raises(ConfigurationError, match=r"1 of 3 members .*'wide': parameter 'features.0.weight' has shape "
                                                 r"\(6, 1, 3, 3\), expected \(4, 1, 3, 3\)"):
        check_same_architecture({"a": a, "wide": DigitsConvNet(6, 8).state_dict(), "b": b})
