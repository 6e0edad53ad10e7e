"""The GMN trained in the loop (``gmn_training="readout" | "full"``), and the frozen ablation."""

from __future__ import annotations

import gpytorch
import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.surrogate.dataset import InputLayout, make_row
from fms_lightning.surrogate.gp import Surrogate, SurrogateConfig
from fms_lightning.surrogate.readout import GMNTraining, GraphReadout, SnapshotFeaturizer, segment_mean
from fms_lightning.surrogate.weights import WeightFeaturizer, model_graph_fn
from fms_lightning.weightspace import GMNEncoder
from tests.surrogate.synthetic import GmnProblem, tiny_mlp
from tests.weightspace.zoo import ZOO_BY_NAME

FAST = dict(n_candidates=16, initial_steps=15, refine_steps=4)


def _encoder(dtype: torch.dtype = torch.float32) -> GMNEncoder:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GMNEncoder(hidden=(8, 8), msg_dim=4).to(dtype)


def _fit_on_models(name: str, mode: str, *, dtype: torch.dtype = torch.float64, steps: int = 25):
    """A surrogate whose rows are 6 models of a zoo architecture, labelled by their weights' scale."""
    entry = ZOO_BY_NAME[name]
    feat = SnapshotFeaturizer(_encoder(dtype), model_graph_fn(lambda cfg: entry.make()), mode=mode)
    layout = InputLayout(n_hp=1, max_epochs=1, n_weight=1)
    rows, ys = [], []
    for k in range(6):
        model = entry.build(seed=k)
        scale = 0.5 + 0.2 * k
        sd = {n: t * scale if t.is_floating_point() else t for n, t in model.state_dict().items()}
        key = feat.add({}, sd)
        rows.append(make_row(layout, torch.tensor([k / 5.0]), 1, [], feat[key]))
        ys.append(scale)
    surrogate = Surrogate(layout, SurrogateConfig(initial_steps=steps, lr=1e-2), weights=feat)
    x, y = torch.stack(rows), torch.tensor(ys, dtype=torch.float64)
    surrogate.fit(x, y, steps=steps, from_scratch=True, seed=0)
    return surrogate, feat, entry


def _slots(feat: SnapshotFeaturizer, keys: list[str]) -> torch.Tensor:
    return torch.stack([feat[k] for k in keys]).to(torch.float64)


# -- gradients reach the GMN -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["readout", "full"])
def test_fit_trains_the_gmn_and_the_mll_gradient_reaches_it(mode):
    surrogate, feat, _ = _fit_on_models("mlp", mode, dtype=torch.float32)
    readout = surrogate.readout
    assert isinstance(readout, GraphReadout)
    fresh = feat.make_module()  # what a from-scratch build starts from, before any step
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the seed fit() used for this first attempt
        surrogate_0 = Surrogate(surrogate.layout, surrogate.config, weights=feat)
        surrogate_0.fit(surrogate._train[0], surrogate._train[1], steps=0, from_scratch=True, seed=0)
    assert not torch.allclose(readout.lin.weight.float(), surrogate_0.readout.lin.weight.float())
    if mode == "full":
        assert surrogate.trunk_trained
        moved = [not torch.equal(p, q) for p, q in zip(readout.trunk.parameters(), feat.encoder.parameters())]
        assert all(moved), "every trunk tensor should have been updated by Adam"
        assert next(readout.trunk.parameters()).dtype == torch.float32  # ψ is float64, the GMN keeps its dtype
    else:
        assert readout.trunk is None and fresh.trunk is None and not surrogate.trunk_trained

    model = surrogate.model
    model.train()
    readout.prepare(train_trunk=mode == "full")
    x, y = surrogate._train
    model.zero_grad()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    with gpytorch.settings.max_cholesky_size(100_000):
        (-mll(model(x), y)).backward()
    assert readout.lin.weight.grad is not None and readout.lin.weight.grad.abs().sum() > 0
    if mode == "full":
        for name, p in readout.trunk.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    readout.prepare(train_trunk=False)


def test_refits_train_the_readout_on_cached_states_only():
    surrogate, feat, entry = _fit_on_models("mlp", "full", dtype=torch.float32)
    trunk_before = [p.clone() for p in surrogate.readout.trunk.parameters()]
    lin_before = surrogate.readout.lin.weight.clone()
    x, y = surrogate._train
    surrogate.fit(x, y, steps=5, from_scratch=False, seed=1)
    assert not surrogate.trunk_trained
    assert all(torch.equal(a, b) for a, b in zip(trunk_before, surrogate.readout.trunk.parameters()))
    assert not torch.equal(lin_before, surrogate.readout.lin.weight)


# -- permutation invariance after training ---------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("mode", ["readout", "full"])
def test_trained_features_are_permutation_invariant(name, mode):
    surrogate, feat, entry = _fit_on_models(name, mode)
    readout = surrogate.readout
    model = entry.build(seed=42)
    twin = entry.permuted(model)
    other = entry.build(seed=43)
    keys = [feat.add({}, m.state_dict()) for m in (model, twin, other)]
    assert len(set(keys)) == 3  # the permuted weights are different bytes
    for train_trunk in (False, True) if mode == "full" else (False,):
        readout.prepare(train_trunk=train_trunk)
        with torch.no_grad():
            xi = readout(_slots(feat, keys))
        assert xi.dtype == torch.float64
        torch.testing.assert_close(xi[0], xi[1], atol=1e-6, rtol=0)
        assert (xi[0] - xi[2]).abs().max() > 1e-4  # not trivially constant
    readout.prepare(train_trunk=False)
    mean, _ = surrogate.predict(torch.stack([make_row(surrogate.layout, torch.tensor([0.3]), 1, [], feat[k])
                                             for k in keys[:2]]))
    torch.testing.assert_close(mean[0], mean[1], atol=1e-6, rtol=0)


def test_segment_mean():
    v = torch.tensor([[1.0], [3.0], [5.0]])
    assert segment_mean(v, torch.tensor([0, 0, 1]), 3).flatten().tolist() == [2.0, 5.0, 0.0]


# -- the optimizer: resume equals uninterrupted ------------------------------------------
def _opt(mode: str, seed: int = 3, **kw) -> tuple[FMSOptimizer, GmnProblem]:
    p = GmnProblem(1)
    opt = FMSOptimizer(p.space, max_epochs=4, method="fms-gmn", seed=seed, model_factory=tiny_mlp,
                       starting_weights_fn=p.start_weights, encoder=_encoder(), gmn_training=mode,
                       full_fit_until=5, **{**FAST, **kw})
    return opt, p


def _step(opt: FMSOptimizer, p: GmnProblem):
    s = opt.suggest()
    for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
        opt.observe(s.trial_id, e, p.value(s.config, e), weights=p.weights(s.config, e))
    return s


@pytest.mark.parametrize("mode", ["readout", "full"])
@pytest.mark.parametrize("n_before", [3, 8])  # inside the from-scratch phase, and in the refine phase
def test_resume_equals_uninterrupted(mode, n_before, tmp_path):
    a, p = _opt(mode)
    for _ in range(n_before):
        _step(a, p)
    a.suggest()  # one pending
    torch.save(a.state_dict(), tmp_path / "opt.pt")
    b, _ = _opt(mode)
    b.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for _ in range(3):
        sa, sb = a.suggest(), b.suggest()
        assert sa == sb
        for opt in (a, b):
            opt.observe(sa.trial_id, sa.epoch, p.value(sa.config, sa.epoch), p.weights(sa.config, sa.epoch))
    ma, _ = a.predict([{"model": "m0", "lr": 0.5}])
    mb, _ = b.predict([{"model": "m0", "lr": 0.5}])
    assert torch.equal(ma, mb)


def test_state_of_another_gmn_training_is_rejected():
    a, p = _opt("readout")
    _step(a, p)
    b, _ = _opt("full")
    with pytest.raises(ConfigurationError, match="gmn_training='readout'"):
        b.load_state_dict(a.state_dict())


def test_full_mode_pretrain_and_predict():
    opt, p = _opt("full")
    runs = [{"config": {"model": m, "lr": 0.4}, "curve": [p.value({"model": m, "lr": 0.4}, e) for e in range(1, 5)],
             "weights": [p.start_weights({"model": m})] + [p.weights({"model": m, "lr": 0.4}, e) for e in range(1, 5)]}
            for m in ("m0", "m1", "m2")]
    opt.pretrain(runs, steps=10)
    assert opt.surrogate.trunk_trained  # 15 distinct snapshots <= max_trunk_graphs
    for _ in range(3):
        _step(opt, p)
    mean, std = opt.predict([{"model": "m3", "lr": 0.5}, {"model": "m4", "lr": 0.5}])
    assert torch.isfinite(mean).all() and (std > 0).all()


# -- options ---------------------------------------------------------------------------------
def test_trainable_modes_put_a_slot_in_the_rows():
    opt, p = _opt("readout")
    assert isinstance(opt.featurizer, SnapshotFeaturizer) and opt.layout.n_weight == 1
    _step(opt, p)
    _step(opt, p)
    rows, _ = opt.training_data()
    slot = int(rows[0, opt.layout.weight_slice].item())  # the row of y_{0,1} names W_{0,0} by its slot
    assert opt.featurizer[opt.featurizer.keys[slot]].tolist() == [float(slot)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="fms-flat", gmn_training="readout"), "only method='fms-gmn'"),
        (dict(method="fms-gmn", gmn_training="partial"), "gmn_training='partial' is unknown"),
    ],
)
def test_gmn_training_validation(kwargs, match):
    p = GmnProblem(0)
    with pytest.raises(ConfigurationError, match=match):
        FMSOptimizer(p.space, max_epochs=3, model_factory=tiny_mlp, starting_weights_fn=p.start_weights, **kwargs)


def test_an_encoder_without_node_states_cannot_be_trained():
    from tests.surrogate.standin import IdentityEncoder, vector_graph

    p = GmnProblem(0)
    with pytest.raises(ConfigurationError, match="node_states"):
        FMSOptimizer(p.space, max_epochs=3, method="fms-gmn", encoder=IdentityEncoder(4), graph_fn=vector_graph,
                     starting_weights_fn=p.start_weights, gmn_training="full")
    opt = FMSOptimizer(p.space, max_epochs=3, method="fms-gmn", encoder=IdentityEncoder(4), graph_fn=vector_graph,
                       starting_weights_fn=p.start_weights)
    assert opt.gmn_training is GMNTraining.FROZEN


# -- frozen: the ablation, unchanged ---------------------------------------------------------
def test_frozen_mode_embeds_once_with_a_fixed_encoder():
    opt, p = _opt("frozen")
    assert isinstance(opt.featurizer, WeightFeaturizer) and opt.surrogate.readout is None
    assert opt.layout.n_weight == opt.featurizer.out_dim == 8
    before = {k: v.clone() for k, v in opt.featurizer.encoder.state_dict().items()}
    for _ in range(7):
        _step(opt, p)
    after = opt.featurizer.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows, _ = opt.training_data()
    t = opt.trial(0)
    sd = p.start_weights(t.config)
    with torch.no_grad():
        xi = opt.featurizer.encoder(opt.featurizer.graph_fn(t.config, sd))[0].to(torch.float64)
    torch.testing.assert_close(rows[0, opt.layout.weight_slice], xi)  # row of y_{0,1} reads W_{0,0}


def test_snapshots_observed_as_files_are_saved_by_path_and_rebuilt(tmp_path):
    from fms_lightning.errors import IncompatibleWeightsError

    def step(opt, p, files):
        s = opt.suggest()
        for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
            path = tmp_path / f"t{s.trial_id}_e{e}.pt"
            torch.save(p.weights(s.config, e), path)
            files.append(path)
            opt.observe(s.trial_id, e, p.value(s.config, e), weights=str(path))
        return s

    a, p = _opt("readout")
    files: list = []
    for _ in range(6):
        step(a, p, files)
    state = a.state_dict()
    saved = state["featurizer"]["graphs"]
    assert sum("path" in g for g in saved) == len(files) and all("x" not in g for g in saved if "path" in g)
    torch.save(state, tmp_path / "opt.pt")
    b, _ = _opt("readout")
    b.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert a.suggest() == b.suggest()

    torch.save({k: v * 2 for k, v in torch.load(files[0]).items()}, files[0])
    c, _ = _opt("readout")
    with pytest.raises(IncompatibleWeightsError, match="changed since it was observed"):
        c.load_state_dict(state)


@pytest.mark.parametrize(("trunk_fits", "expected"), [(None, [1, 2, 3, 4, 5]), (2, [4, 5]), (0, [])])
def test_gmn_trunk_fits_picks_the_last_from_scratch_fits(trunk_fits, expected):
    opt, p = _opt("full", gmn_trunk_fits=trunk_fits)
    trained = []
    for _ in range(8):
        n_obs = opt.n_observations
        _step(opt, p)
        if opt.surrogate.model is not None and opt.surrogate.trunk_trained:
            trained.append(n_obs)
    assert trained == expected  # full_fit_until=5: fits after 1..5 observations are from scratch
    if expected:  # the refine phase keeps the last trained trunk: no longer the initial one
        trunk = opt.surrogate.readout.trunk
        assert not all(torch.equal(a, b) for a, b in zip(trunk.parameters(), opt.featurizer.encoder.parameters()))
