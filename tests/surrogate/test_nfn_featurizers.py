"""NFNEncoder where the GMN goes: the frozen WeightFeaturizer and the trainable readout / full modes."""

from __future__ import annotations

import pytest
import torch

from fms_lightning.surrogate.dataset import InputLayout, make_row
from fms_lightning.surrogate.gp import Surrogate, SurrogateConfig
from fms_lightning.surrogate.readout import GraphReadout, SnapshotFeaturizer
from fms_lightning.surrogate.weights import WeightFeaturizer
from fms_lightning.weightspace import NFNEncoder
from tests.weightspace.test_nfn import _build, permute_hidden


def _encoder(dtype: torch.dtype) -> NFNEncoder:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return NFNEncoder(_build("cnn_batchnorm"), hidden=(8, 8), readout=(16,), out_dim=8).to(dtype)


def test_frozen_featurizer_embeds_each_snapshot_once():
    enc = _encoder(torch.float32)
    feat = WeightFeaturizer(enc, enc.graph_fn)
    models = [_build("cnn_batchnorm", seed) for seed in range(3)]
    keys = [feat.add({}, m.state_dict()) for m in models]
    twin = feat.add({}, permute_hidden(models[0], enc.spec, seed=5).state_dict())
    feat.flush()
    assert len(set(keys + [twin])) == 4 and feat[keys[0]].shape == (8,)
    torch.testing.assert_close(feat[keys[0]], feat[twin], atol=1e-5, rtol=0)
    assert (feat[keys[0]] - feat[keys[1]]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["readout", "full"])
def test_trainable_modes_fit_and_stay_invariant(mode):
    feat = SnapshotFeaturizer(_encoder(torch.float64), _encoder(torch.float64).graph_fn, mode=mode)
    layout = InputLayout(n_hp=1, max_epochs=1, n_weight=1)
    rows, ys = [], []
    for k in range(6):
        scale = 0.5 + 0.2 * k
        sd = {n: t * scale if t.is_floating_point() else t for n, t in _build("cnn_batchnorm", k).state_dict().items()}
        rows.append(make_row(layout, torch.tensor([k / 5.0]), 1, [], feat[feat.add({}, sd)]))
        ys.append(scale)
    surrogate = Surrogate(layout, SurrogateConfig(initial_steps=15, lr=1e-2), weights=feat)
    surrogate.fit(torch.stack(rows), torch.tensor(ys, dtype=torch.float64), steps=15, from_scratch=True, seed=0)
    readout = surrogate.readout
    assert isinstance(readout, GraphReadout)
    if mode == "full":
        assert surrogate.trunk_trained
        assert all(not torch.equal(p, q) for p, q in zip(readout.trunk.parameters(), feat.encoder.parameters()))
    model = _build("cnn_batchnorm", 42)
    keys = [feat.add({}, m.state_dict()) for m in (model, permute_hidden(model, feat.encoder.spec, 1))]
    readout.prepare(train_trunk=False)
    with torch.no_grad():
        xi = readout(torch.stack([feat[k] for k in keys]).to(torch.float64))
    torch.testing.assert_close(xi[0], xi[1], atol=1e-6, rtol=0)


def test_trainable_featurizer_state_round_trips(tmp_path):
    enc = _encoder(torch.float64)
    feat = SnapshotFeaturizer(enc, enc.graph_fn, mode="readout")
    for seed in range(2):
        feat.add({}, _build("cnn_batchnorm", seed).state_dict())
    torch.save(feat.state_dict(), tmp_path / "feat.pt")
    other = SnapshotFeaturizer(_encoder(torch.float64), enc.graph_fn, mode="readout")
    other.load_state_dict(torch.load(tmp_path / "feat.pt", weights_only=True))
    for a, b in zip(feat.node_states([0, 1]), other.node_states([0, 1])):
        assert a.shape == (1, 8) and torch.equal(a, b)
