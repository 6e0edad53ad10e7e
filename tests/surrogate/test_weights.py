from __future__ import annotations

import pytest
import torch
from torch import nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.weights import WeightFeaturizer, content_key, load_weights, model_graph_fn
from tests.surrogate.standin import IdentityEncoder, vector_graph


def _sd(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), v)}


def test_each_snapshot_is_embedded_once_and_batched():
    enc = IdentityEncoder(3)
    f = WeightFeaturizer(enc, vector_graph, batch_size=4)
    keys = [f.add({}, _sd(float(i % 5))) for i in range(10)]
    assert len(set(keys)) == 5
    f.flush()
    assert enc.calls == 2  # 5 graphs, 4 per call
    f.flush()
    f.add({}, _sd(1.0))
    f.flush()
    assert enc.calls == 2
    assert f[keys[3]].tolist() == [3.0, 3.0, 3.0]
    assert f[keys[3]].dtype == torch.float64


def test_snapshot_paths_load_safely(tmp_path):
    torch.save({"state_dict": _sd(2.0), "epoch": 3}, tmp_path / "ckpt.pt")
    sd = load_weights(tmp_path / "ckpt.pt")
    assert content_key(sd) == content_key(_sd(2.0))
    f = WeightFeaturizer(IdentityEncoder(3), vector_graph)
    assert f.add({}, str(tmp_path / "ckpt.pt")) == f.add({}, _sd(2.0))


def test_encoder_without_out_dim_is_rejected():
    with pytest.raises(ConfigurationError, match="out_dim"):
        WeightFeaturizer(nn.Linear(2, 2), vector_graph)


@pytest.mark.parametrize("kind", ["gmn", "flat"])
def test_real_encoders_on_parameter_graphs(kind):
    from fms_lightning.weightspace import FlatEncoder, GMNEncoder, parameter_graph

    def factory(cfg):
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))

    graph_fn = model_graph_fn(factory)
    models = [factory({}) for _ in range(3)]
    if kind == "gmn":
        enc, out_dim = GMNEncoder(hidden=(8, 8), out_dim=5), None
    else:
        enc, out_dim = (lambda g: FlatEncoder(g, hidden=(8,), out_dim=5)), 5
    f = WeightFeaturizer(enc, graph_fn, out_dim=out_dim)
    keys = [f.add({}, m.state_dict()) for m in models]
    f.flush()
    embs = torch.stack([f[k] for k in keys])
    assert embs.shape == (3, 5) and torch.isfinite(embs).all()
    assert not torch.allclose(embs[0], embs[1])
    assert isinstance(parameter_graph(models[0]).num_nodes, int)
