"""Tests of fms_lightning/weightspace/encoders.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError
from fms_lightning.weightspace import FlatEncoder, GMNEncoder, parameter_graph
from tests.weightspace.contract import EncoderContract, entry  # noqa: F401  (fixture)
from tests.weightspace.zoo import ZOO_BY_NAME


class TestGMNEncoder(EncoderContract):
    permutation_invariant = True

    def make_encoder(self, reference: Data) -> nn.Module:
        return GMNEncoder(hidden=(16, 24, 32), msg_dim=8, out_dim=5)


class TestGMNEncoderPaperWidths(EncoderContract):
    """Default widths (64, 128, 256) of paper A.6, no head: eq. 6 exactly."""

    permutation_invariant = True

    def make_encoder(self, reference: Data) -> nn.Module:
        return GMNEncoder()


class TestFlatEncoder(EncoderContract):
    permutation_invariant = False  # FMS-FLAT: the ablation without the symmetry

    def make_encoder(self, reference: Data) -> nn.Module:
        return FlatEncoder(reference, hidden=(16,), out_dim=4)


def test_gmn_defaults_follow_paper() -> None:
    enc = GMNEncoder()
    assert [layer.update_lin.out_features for layer in enc.layers] == [64, 128, 256]
    assert enc.out_dim == 256


def test_gmn_rejects_bad_widths() -> None:
    with pytest.raises(ConfigurationError, match="hidden"):
        GMNEncoder(hidden=())


def test_gmn_rejects_graph_with_other_kernel_size() -> None:
    g = parameter_graph(nn.Linear(3, 2), max_kernel_size=4)
    with pytest.raises(IncompatibleWeightsError, match="max_kernel_size"):
        GMNEncoder()(g)
    assert GMNEncoder(max_kernel_size=4, out_dim=3)(g).shape == (1, 3)


def test_gmn_mixes_architectures_in_one_batch() -> None:
    graphs = [parameter_graph(ZOO_BY_NAME[n].build()) for n in ("mlp", "cnn", "vit")]
    out = GMNEncoder(hidden=(8, 8), out_dim=2)(Batch.from_data_list(graphs))
    assert out.shape == (3, 2)


def test_gmn_is_trainable() -> None:
    g = parameter_graph(ZOO_BY_NAME["mlp"].build())
    enc = GMNEncoder(hidden=(8,), out_dim=1)
    enc(g).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_flat_encoder_rejects_other_layout() -> None:
    g_mlp = parameter_graph(ZOO_BY_NAME["mlp"].build())
    g_other = parameter_graph(nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)))
    enc = FlatEncoder(g_mlp, out_dim=3)
    with pytest.raises(IncompatibleWeightsError, match="one parameter layout"):
        enc(g_other)
    with pytest.raises(IncompatibleWeightsError, match="GMNEncoder"):
        enc(Batch.from_data_list([g_mlp, g_other]))


def test_flat_encoder_pools_long_vectors() -> None:
    g = parameter_graph(ZOO_BY_NAME["resnet"].build())
    enc = FlatEncoder(g, hidden=(8,), out_dim=2, max_inputs=64)
    assert enc.in_dim == 64
    assert enc(Batch.from_data_list([g, g])).shape == (2, 2)
    assert torch.isfinite(enc(g)).all()


def test_sparse_path_matches_pyg_propagate(entry) -> None:  # noqa: F811
    from tests.weightspace.contract import graph_of

    g1, g2 = graph_of(entry, entry.build(0)), graph_of(entry, entry.build(1))
    batch = Batch.from_data_list([g1, g2])
    torch.manual_seed(0)
    enc = GMNEncoder(hidden=(8, 12), msg_dim=4, rank=3, out_dim=2).double()
    ref = GMNEncoder(hidden=(8, 12), msg_dim=4, rank=3, out_dim=2, sparse=False).double()
    ref.load_state_dict(enc.state_dict())
    for data in (g1, batch):
        torch.testing.assert_close(enc(data), ref(data), atol=1e-10, rtol=1e-10)
    # gradients agree too
    enc(batch).sum().backward()
    ref(batch).sum().backward()
    for (n, p), q in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-7, msg=n)


def test_gated_spmm_gradcheck() -> None:
    from fms_lightning.weightspace._sparse import GatedSpMM

    gen = torch.Generator().manual_seed(0)
    n, e, c, d = 5, 11, 2, 3
    src, dst = torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    from fms_lightning.weightspace._sparse import StructureCache

    csr, other = StructureCache().get(None, torch.stack([src, dst]), n)
    gates = torch.randn(e, c, dtype=torch.float64, generator=gen, requires_grad=True)
    dense = torch.randn(n * c, d, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, h: GatedSpMM.apply(g, h, csr, other), (gates, dense))
