"""Tests of fms_lightning/weightspace/graph.py (with layers.py, ops.py, trace.py)."""

from __future__ import annotations

import doctest
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fms_lightning.weightspace.cache as cache_mod
import fms_lightning.weightspace.encoders as encoders_mod
import fms_lightning.weightspace.graph as graph_mod
from fms_lightning.errors import ConfigurationError, GraphConstructionError, IncompatibleWeightsError
from fms_lightning.weightspace import NODE_FEATURE_DIM, EdgeType, NodeType, edge_feature_dim, parameter_graph
from fms_lightning.weightspace.features import NODE_VALUE_SLOTS
from tests.weightspace.contract import entry, graph_of  # noqa: F401  (fixture)
from tests.weightspace.zoo import ZOO, ZOO_BY_NAME, ZooEntry


def _count(g, edge_type: EdgeType) -> int:
    return int((g.edge_type == int(edge_type)).sum())


# ------------------------------------------------------------------ properties over the zoo
def test_accounting_every_parameter_once(entry: ZooEntry) -> None:
    model = entry.build()
    g = graph_of(entry, model)
    assert g.num_param_elements == sum(p.numel() for p in model.parameters()) == g.num_params
    # the values themselves are placed once: no kernel in the zoo exceeds K, so nothing is pooled
    k = g.max_kernel_size
    placed = g.edge_attr[:, :k].abs().sum() + g.x[:, list(NODE_VALUE_SLOTS)].abs().sum()
    expected = sum(p.detach().abs().sum() for p in model.parameters())
    torch.testing.assert_close(placed.double(), expected.double(), rtol=1e-5, atol=1e-4)


def test_layout_widths(entry: ZooEntry) -> None:
    g = graph_of(entry, entry.build())
    assert g.x.shape == (g.num_nodes, NODE_FEATURE_DIM)
    assert g.edge_attr.shape == (g.edge_index.shape[1], edge_feature_dim(9))
    assert int(g.edge_index.max()) < g.num_nodes
    assert torch.isfinite(g.x).all() and torch.isfinite(g.edge_attr).all()


def test_same_architecture_same_wiring(entry: ZooEntry) -> None:
    g0, g1 = graph_of(entry, entry.build(0)), graph_of(entry, entry.build(1))
    assert torch.equal(g0.edge_index, g1.edge_index)
    assert torch.equal(g0.node_type, g1.node_type) and torch.equal(g0.edge_type, g1.edge_type)
    assert g0.signature == g1.signature
    assert not torch.equal(g0.edge_attr, g1.edge_attr)  # the weights differ


def test_different_architectures_different_graphs() -> None:
    sigs = {e.name: graph_of(e, e.build()).signature for e in ZOO}
    for a, b in itertools.combinations(sigs, 2):
        assert sigs[a] != sigs[b], (a, b)
    wider = parameter_graph(nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 3)))
    assert wider.signature != sigs["mlp"]


def test_state_dict_overrides_model_weights(entry: ZooEntry) -> None:
    model, other = entry.build(0), entry.build(1)
    ex = entry.example() if entry.needs_example else None
    g = parameter_graph(model, other.state_dict(), example_input=ex)
    torch.testing.assert_close(g.edge_attr, graph_of(entry, other).edge_attr)
    torch.testing.assert_close(g.x, graph_of(entry, other).x)


# ----------------------------------------------------------------------- layer specifics
def test_linear_edges_carry_weights() -> None:
    lin = nn.Linear(3, 2)
    g = parameter_graph(nn.Sequential(lin))
    assert g.num_nodes == 5 and g.edge_index.shape[1] == 6
    for (s, d), v in zip(g.edge_index.t().tolist(), g.edge_attr[:, 0].tolist()):
        assert v == pytest.approx(lin.weight[d - 3, s].item())
    torch.testing.assert_close(g.x[3:, 0], lin.bias.detach())
    assert g.x[3:, 6].tolist() == [1.0, 1.0]  # output flag
    assert (g.node_type[:3] == int(NodeType.INPUT)).all()


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_edges(groups: int) -> None:
    conv = nn.Conv2d(4, 8, 3, groups=groups)
    g = parameter_graph(nn.Sequential(conv))
    assert _count(g, EdgeType.CONV) == 4 * 8 // groups
    src, dst = g.edge_index
    # an input channel only feeds the output channels of its group
    assert ((src // (4 // groups)) == ((dst - 4) // (8 // groups))).all()
    w = conv.weight.detach().reshape(8, 4 // groups, 9)
    expected = w[dst - 4, src % (4 // groups)]
    torch.testing.assert_close(g.edge_attr[:, :9], expected)


def test_large_kernels_are_pooled_to_k() -> None:
    conv = nn.Conv2d(2, 3, 7)
    g = parameter_graph(nn.Sequential(conv), max_kernel_size=9)
    pooled = F.adaptive_avg_pool2d(conv.weight.detach().reshape(6, 1, 7, 7), 3).reshape(3, 2, 9)
    src, dst = g.edge_index
    torch.testing.assert_close(g.edge_attr[:, :9], pooled[dst - 2, src])
    assert g.num_param_elements == sum(p.numel() for p in conv.parameters())  # counted, though pooled


@pytest.mark.parametrize("channels_last", [False, True])
def test_flatten_after_conv(channels_last: bool) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 1)
            self.fc = nn.Linear(3 * 4, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x)
            h = h.permute(0, 2, 3, 1).flatten(1) if channels_last else h.flatten(1)
            return self.fc(h)

    net = Net()
    g = parameter_graph(net)
    assert _count(g, EdgeType.FLATTEN_LINEAR) == 3 * 2
    w = net.fc.weight.detach()
    per = w.view(2, 4, 3).transpose(1, 2) if channels_last else w.view(2, 3, 4)
    mask = g.edge_type == int(EdgeType.FLATTEN_LINEAR)
    src, dst = g.edge_index[:, mask]
    torch.testing.assert_close(g.edge_attr[mask, :4], per[dst - dst.min(), src - src.min()])


def test_attention_structure() -> None:
    vit = ZOO_BY_NAME["vit"].build()
    g = parameter_graph(vit)
    e, h = 8, 2
    assert int((g.node_type == int(NodeType.ATTN_HEAD)).sum()) == h
    assert _count(g, EdgeType.ATTN_IN) == 3 * e * e
    assert _count(g, EdgeType.ATTN_OUT) == e * e
    assert _count(g, EdgeType.ATTN_HEAD) == 3 * e
    assert _count(g, EdgeType.ATTN_QK_PAIR) == e
    assert int((g.node_type == int(NodeType.PARAM_TOKEN)).sum()) == 1 + 5  # class token + 5 positions


def test_residual_and_concat_junctions() -> None:
    g = parameter_graph(ZOO_BY_NAME["resnet"].build())
    assert _count(g, EdgeType.RESIDUAL) == 2 * (4 + 8)  # two blocks, two operands each
    h = parameter_graph(ZOO_BY_NAME["handwritten"].build())
    c_in = (h.edge_index[1][h.edge_type == int(EdgeType.LINEAR)]).bincount()
    assert int(c_in.max()) == 10  # Linear(10, 6) reads the concatenation of 6 + 4 channels


def test_embedding_rows_are_bounded() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, ids: Tensor) -> Tensor:
            return self.fc(self.emb(ids).mean(dim=-2))

    bag = Bag()
    ids = torch.randint(0, 50, (2, 7))
    g = parameter_graph(bag, example_input=ids, max_embedding_rows=10)
    assert int((g.node_type == int(NodeType.EMBEDDING_ROW)).sum()) == 10
    assert _count(g, EdgeType.EMBEDDING) == 10 * 4
    assert g.num_param_elements == sum(p.numel() for p in bag.parameters())
    full = parameter_graph(bag, example_input=ids)
    assert _count(full, EdgeType.EMBEDDING) == 50 * 4


def test_mlp_on_images_gets_one_input_node_per_pixel() -> None:
    g = parameter_graph(nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)))
    assert int((g.node_type == int(NodeType.INPUT)).sum()) == 18


# -------------------------------------------------------------------- fallbacks and errors
class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def test_unknown_module_becomes_opaque_node_with_one_warning() -> None:
    model = _Recurrent()
    with pytest.warns(UserWarning, match="GRU.*'rnn'.*opaque"):
        g = parameter_graph(model)
    assert int((g.node_type == int(NodeType.OPAQUE)).sum()) >= 1
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parameter_graph(model)  # warned once only


def test_unknown_module_can_raise() -> None:
    with pytest.raises(GraphConstructionError, match="GRU at 'rnn'"):
        parameter_graph(_Recurrent(), on_unsupported="raise")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = _Gate()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gate(x))


class _Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) if x.sum() > 0 else x


def test_untraceable_forward_names_the_fix() -> None:
    with pytest.raises(GraphConstructionError, match="leaf_modules"):
        parameter_graph(_Branchy())
    with pytest.warns(UserWarning, match="_Gate"):
        g = parameter_graph(_Branchy(), leaf_modules=("gate",))
    assert g.num_param_elements == 12 + 8


def test_unused_parameters_are_still_accounted() -> None:
    class Extra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.unused_head = nn.Linear(3, 5)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x)

    with pytest.warns(UserWarning, match="unused_head"):
        g = parameter_graph(Extra())
    assert g.num_param_elements == 8 + 20


def test_ambiguous_reduction_asks_for_example_input() -> None:
    model = ZOO_BY_NAME["deepsets"].build()
    with pytest.raises(GraphConstructionError, match="example_input"):
        parameter_graph(model)


def test_state_dict_mismatch_errors() -> None:
    model = ZOO_BY_NAME["mlp"].build()
    sd = model.state_dict()
    with pytest.raises(IncompatibleWeightsError, match="missing keys"):
        parameter_graph(model, {k: v for k, v in sd.items() if k != "0.weight"})
    with pytest.raises(IncompatibleWeightsError, match="unexpected keys.*model.0.weight"):
        parameter_graph(model, {f"model.{k}": v for k, v in sd.items()})
    bad = dict(sd)
    bad["0.weight"] = torch.zeros(3, 3)
    with pytest.raises(IncompatibleWeightsError, match="different architecture"):
        parameter_graph(model, bad)


def test_invalid_options() -> None:
    with pytest.raises(ConfigurationError, match="nn.Module"):
        parameter_graph({"w": torch.zeros(2)})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_kernel_size"):
        parameter_graph(nn.Linear(2, 2), max_kernel_size=0)
    with pytest.raises(ConfigurationError, match="on_unsupported"):
        parameter_graph(nn.Linear(2, 2), on_unsupported="skip")  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [graph_mod, encoders_mod, cache_mod])
def test_docstring_examples(module: object) -> None:
    ns = {"nn": nn, "torch": torch}
    result = doctest.testmod(module, extraglobs=ns, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("key", ["layer2", "BasicBlock"])
def test_summarize_bounds_graph_size(key: str) -> None:
    from tests.weightspace.zoo import BasicBlock

    model = ZOO_BY_NAME["resnet"].build()
    full = parameter_graph(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # requested summaries do not warn
        small = parameter_graph(model, summarize=(key if key == "layer2" else BasicBlock,))
    assert small.edge_index.shape[1] < full.edge_index.shape[1]
    assert small.num_param_elements == full.num_param_elements
    n_opaque = int((small.node_type == int(NodeType.OPAQUE)).sum())
    assert n_opaque >= (1 if key == "layer2" else 2)
    same = parameter_graph(ZOO_BY_NAME["resnet"].build(1), summarize=(key if key == "layer2" else BasicBlock,))
    assert same.signature == small.signature


def test_conv1d_batchnorm1d_layernorm() -> None:
    class Seq1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3, groups=2)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4, 3)
            self.ln = nn.LayerNorm(3)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.bn(self.conv(x))).mean(dim=-1)
            return self.ln(self.fc(h))

    model = Seq1d()
    g = parameter_graph(model)
    assert _count(g, EdgeType.CONV) == 4 * 1
    assert _count(g, EdgeType.NORM) == 4 + 3
    assert _count(g, EdgeType.POOL) == 4
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())


def test_cross_attention_with_separate_projections_and_bias_kv() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(4, 8)
            self.attn = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, add_bias_kv=True, batch_first=True)

        def forward(self, x: Tensor, keys: Tensor, values: Tensor) -> Tensor:
            return self.attn(self.q(x), keys, values)[0]

    model = Cross()
    g = parameter_graph(model)
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())
    assert _count(g, EdgeType.ATTN_IN) == 8 * 8 + 8 * 5 + 8 * 6
    assert int((g.node_type == int(NodeType.INPUT)).sum()) == 4 + 5 + 6


def test_lightning_module_is_traced_through_its_forward() -> None:
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    module = Module()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        g = parameter_graph(module)
    assert g.signature == parameter_graph(module.net).signature
    assert g.num_param_elements == 58


def test_summarized_graph_keeps_permutation_invariance() -> None:
    from fms_lightning.weightspace import GMNEncoder

    entry_ = ZOO_BY_NAME["resnet"]
    model = entry_.build()
    perm = entry_.permuted(model)
    g, gp = (parameter_graph(m, summarize=("layer1",)) for m in (model, perm))
    torch.manual_seed(0)
    enc = GMNEncoder(hidden=(8, 8), out_dim=3).double()
    with torch.no_grad():
        torch.testing.assert_close(enc(g), enc(gp), atol=1e-6, rtol=0)


def test_channel_concat_of_unknown_rank_is_not_guessed() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    with pytest.raises(GraphConstructionError, match="example_input"):
        parameter_graph(Two())
    g = parameter_graph(Two(), example_input=torch.randn(2, 3))
    assert _count(g, EdgeType.CONCAT_TOKENS) == 0
    assert _count(g, EdgeType.LINEAR) == 12 + 12 + 16


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_encoder_is_read(norm_first: bool) -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=norm_first)
            self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8), enable_nested_tensor=False)
            self.out = nn.Linear(8, 2)

        def forward(self, ids: Tensor) -> Tensor:
            return self.out(self.enc(self.emb(ids))[:, 0])

    model = Encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        g = parameter_graph(model, example_input=torch.randint(0, 20, (2, 5)))
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())
    assert int((g.node_type == int(NodeType.ATTN_HEAD)).sum()) == 2 * 2
    assert int((g.node_type == int(NodeType.OPAQUE)).sum()) == 0
