from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fms_lightning import Choice, LogUniform, SearchSpace, Uniform
from fms_lightning.errors import ConfigurationError, SurrogateError
from fms_lightning.optimizer import FMSOptimizer, Suggestion, TrialStatus
from fms_lightning.surrogate.gp import Surrogate
from tests.surrogate.standin import IdentityEncoder, vector_graph
from tests.surrogate.synthetic import W_DIM, GmnProblem, Problem, run, tiny_mlp


FAST = dict(n_candidates=32, initial_steps=20, refine_steps=5)
SPACE = SearchSpace({"lr": LogUniform(1e-4, 1e-1), "d": Uniform(0.0, 1.0), "c": Choice(["a", "b"])})


def _f(cfg, j):
    return -(math.log10(cfg["lr"]) + 2.5) ** 2 - (cfg["d"] - 0.3) ** 2 + (0.3 if cfg["c"] == "a" else 0) - math.exp(-j / 3)


def _opt(method="dyhpo", seed=0, problem=None, **kw):
    if method.startswith("fms"):
        problem = problem or Problem(0)
        kw.update(encoder=IdentityEncoder(W_DIM), graph_fn=vector_graph, starting_weights_fn=problem.start_weights)
        space = problem.space
    else:
        space = problem.space if problem else SPACE
    return FMSOptimizer(space, max_epochs=5, method=method, seed=seed, **{**FAST, **kw})


def _infos(opt):
    return [opt.trial(t) for t in opt.trial_ids]


def _drive(opt, n, value=_f, weights=None):
    out = []
    for _ in range(n):
        s = opt.suggest()
        out.append(s)
        for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
            opt.observe(s.trial_id, e, value(s.config, e), weights=None if weights is None else weights(s.config, e))
    return out


def test_initial_design_is_one_random_config_at_epoch_one():
    s = _opt().suggest()
    assert isinstance(s, Suggestion) and s.epoch == 1 and s.trial_id == 0
    SPACE.validate(s.config)


def test_random_trains_to_max_epochs():
    opt = _opt("random")
    sugs = _drive(opt, 3)
    assert all(s.epoch == 5 for s in sugs)
    assert all(t.status is TrialStatus.COMPLETED for t in _infos(opt))


@pytest.mark.parametrize("method", ["gp", "dyhpo"])
@pytest.mark.parametrize("learning_curve", [True, False])
def test_loop_advances_one_epoch_at_a_time(method, learning_curve):
    opt = _opt(method, learning_curve=learning_curve, kernel="rbf")
    for _ in range(12):
        s = opt.suggest()
        assert s.epoch == opt.trial(s.trial_id).epochs + 1  # exactly one more epoch
        opt.observe(s.trial_id, s.epoch, _f(s.config, s.epoch))
    assert opt.n_observations == 12
    assert max(t.epochs for t in _infos(opt)) <= 5
    assert opt.best().value == max(_f(t.config, j) for t in _infos(opt) for j in range(1, t.epochs + 1))


def test_fms_with_weights_loop():
    p = Problem(0)
    opt = _opt("fms-gmn", problem=p)
    _drive(opt, 10, p.value, p.weights)
    assert opt.n_observations == 10
    # one embedding per distinct snapshot, plus the hub starting weights
    assert len(opt.featurizer.cache) <= 10 + len(p.hubs)


def test_parallel_suggestions_do_not_repeat_running_trials():
    opt = _opt()
    _drive(opt, 6)
    pending = [opt.suggest() for _ in range(4)]
    ids = [s.trial_id for s in pending]
    assert len(set(ids)) == 4
    assert all(opt.trial(i).status is TrialStatus.RUNNING for i in ids)
    configs = {tuple(sorted(s.config.items())) for s in pending}
    assert len(configs) == 4


def test_mark_failed_excludes_trial():
    opt = _opt()
    _drive(opt, 4)
    s = opt.suggest()
    opt.mark_failed(s.trial_id, "CUDA OOM")
    assert opt.trial(s.trial_id).status is TrialStatus.FAILED
    with pytest.raises(ConfigurationError, match="failed"):
        opt.observe(s.trial_id, s.epoch, 0.0)
    for _ in range(5):
        assert _drive(opt, 1)[0].trial_id != s.trial_id


def test_non_finite_value_marks_failed_with_one_warning():
    opt = _opt()
    with pytest.warns(RuntimeWarning, match="marking it failed"):
        s = opt.suggest()
        opt.observe(s.trial_id, 1, float("nan"))
    assert opt.trial(s.trial_id).status is TrialStatus.FAILED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = opt.suggest()
        opt.observe(s.trial_id, 1, float("inf"))


def test_observe_validation():
    opt = _opt()
    s = opt.suggest()
    with pytest.raises(ConfigurationError, match="Unknown trial_id=99"):
        opt.observe(99, 1, 0.0)
    with pytest.raises(ConfigurationError, match="expected epoch 1"):
        opt.observe(s.trial_id, 2, 0.0)
    opt.observe(s.trial_id, 1, 0.0)
    with pytest.raises(ConfigurationError, match="paused"):
        opt.observe(s.trial_id, 2, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="tpe"), "valid methods are"),
        (dict(method="fms-gmn"), "graph_fn"),
        (dict(mode="up"), "mode must be 'min' or 'max', got 'up'"),
        (dict(max_epochs=0), "max_epochs must be an integer >= 1, got 0"),
        (dict(method="dyhpo", kernel="cosine"), "kernel='cosine'"),
        (dict(method="dyhpo", surrogate_threads=0), "surrogate_threads"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        FMSOptimizer(SPACE, **{"max_epochs": 3, **kwargs})


@pytest.mark.parametrize("method", ["dyhpo", "fms-flat"])
def test_state_dict_round_trip_gives_identical_next_suggestion(method, tmp_path):
    p = Problem(1)
    a = _opt(method, seed=3, problem=p)
    _drive(a, 8, p.value, p.weights)
    a.suggest()  # one pending
    torch.save(a.state_dict(), tmp_path / "opt.pt")
    b = _opt(method, seed=3, problem=p)
    b.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for _ in range(2):
        sa, sb = a.suggest(), b.suggest()
        assert sa == sb
        a.observe(sa.trial_id, sa.epoch, p.value(sa.config, sa.epoch), p.weights(sa.config, sa.epoch))
        b.observe(sb.trial_id, sb.epoch, p.value(sb.config, sb.epoch), p.weights(sb.config, sb.epoch))


def test_same_seed_same_suggestions_different_seed_differs():
    a, b, c = _opt(seed=5), _opt(seed=5), _opt(seed=6)
    sa, sb, sc = _drive(a, 8), _drive(b, 8), _drive(c, 8)
    assert sa == sb
    assert sa != sc


def test_surrogate_failure_never_crashes_and_warns_once(monkeypatch):
    opt = _opt()
    _drive(opt, 2)

    def boom(self, *a, **k):
        raise SurrogateError("planted failure")

    monkeypatch.setattr(Surrogate, "fit", boom)
    with pytest.warns(RuntimeWarning, match="planted failure"):
        _drive(opt, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = _drive(opt, 1)[0]
    assert s.epoch == 1


def test_min_mode_flips_the_sign():
    opt = _opt(mode="min")
    _drive(opt, 3, value=lambda c, j: -_f(c, j))
    tid, cfg, epoch, value = opt.best()
    assert value == min(-_f(t.config, j) for t in _infos(opt) for j in range(1, t.epochs + 1))


def test_no_leak_rows_see_weights_from_before_the_label():
    """Plant y_{i,j} in the epoch-j snapshot; no row whose label is y_{i,j} may see it."""
    p = Problem(2)
    planted = {}

    def weights(cfg, e):
        v = p.value(cfg, e)
        planted[(cfg["model"], round(cfg["lr"], 12), e)] = v
        return {"w": torch.tensor([v, float(e), 0.0, 0.0])}

    def start(cfg):
        return {"w": torch.tensor([-99.0, 0.0, 0.0, 0.0])}

    opt = FMSOptimizer(p.space, max_epochs=5, method="fms-gmn", seed=0, encoder=IdentityEncoder(W_DIM),
                       graph_fn=vector_graph, starting_weights_fn=start, acquisition="ei-horizon", **FAST)
    _drive(opt, 15, p.value, weights)
    rows, y = opt.training_data()
    lay = opt.layout
    w = rows[:, lay.weight_slice]
    j = (rows[:, lay.budget_col] * lay.max_epochs).round().long()  # the label's epoch
    m = rows[:, lay.mask_slice].sum(1).long()  # the context length: Y_{i,1..m}
    assert torch.equal(w[:, 1].long(), m)  # the snapshot is W_{i,m}, as recent as the curve
    assert torch.all(m <= j - 1)  # nothing from the label's epoch or later
    assert torch.all(w[m == 0, 0] == -99.0)  # W_{i,0} is the starting weights
    later = m > 0
    assert not torch.any(torch.isclose(w[later, 0], y[later].float().double()))
    # the look-ahead acquisition adds rows that forecast several epochs past their context
    assert torch.any(m < j - 1)
    assert torch.equal(m[: int((m == j - 1).sum())], (j - 1)[: int((m == j - 1).sum())])


def test_pretrain_and_save_load_surrogate(tmp_path):
    p = Problem(3)
    prior = []
    rng = np.random.default_rng(0)
    for cfg in p.space.sample(6, rng=rng):
        prior.append({"config": cfg, "curve": [p.value(cfg, e) for e in range(1, 4)],
                      "weights": [p.start_weights(cfg)] + [p.weights(cfg, e) for e in range(1, 4)]})
    a = _opt("fms-gmn", problem=p)
    a.pretrain(prior, steps=10)
    a.save_surrogate(tmp_path / "s.pt")
    b = _opt("fms-gmn", problem=p)
    b.load_surrogate(tmp_path / "s.pt")
    sa, sb = _drive(a, 3, p.value, p.weights), _drive(b, 3, p.value, p.weights)
    assert sa[0].epoch == 1
    assert [s.trial_id for s in sa] == [s.trial_id for s in sb]
    with pytest.raises(ConfigurationError, match="holds a 'fms-gmn' surrogate"):
        _opt("dyhpo").load_surrogate(tmp_path / "s.pt")
    with pytest.raises(ConfigurationError, match="3 epochs"):
        b.pretrain([{"config": prior[0]["config"], "curve": prior[0]["curve"], "weights": []}])


def test_after_pretraining_the_first_phase_adapts_with_the_full_step_count():
    """Transfer: the first ``full_fit_until`` fits warm-start from the pretrained surrogate but take
    ``initial_steps`` (not ``refine_steps``), so that it adapts to the new task; later fits refine."""
    p = Problem(3)
    rng = np.random.default_rng(0)
    prior = [{"config": cfg, "curve": [p.value(cfg, e) for e in range(1, 4)],
              "weights": [p.start_weights(cfg)] + [p.weights(cfg, e) for e in range(1, 4)]}
             for cfg in p.space.sample(6, rng=rng)]
    opt = _opt("fms-gmn", problem=p, full_fit_until=3)
    opt.pretrain(prior, steps=10)
    steps = []
    for _ in range(6):
        s = opt.suggest()
        steps.append((opt.n_observations, opt.surrogate.last_fit_steps))
        for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
            opt.observe(s.trial_id, e, p.value(s.config, e), weights=p.weights(s.config, e))
    first = [k for n, k in steps if 1 <= n <= 3]
    later = [k for n, k in steps if n > 3]
    assert first and set(first) == {FAST["initial_steps"]}
    assert later and set(later) == {FAST["refine_steps"]}


@pytest.mark.parametrize("method", ["dyhpo", "fms-gmn"])
def test_initial_warm_steps_fit_from_scratch_once_then_warm_start(method, monkeypatch):
    """``initial_warm_steps``: the initial phase's first fit is from scratch with ``initial_steps``,
    its later fits warm-start with ``initial_warm_steps``; afterwards ``refine_steps``. None keeps
    every fit of the phase from scratch."""
    from fms_lightning.surrogate.gp import Surrogate

    calls = []
    real = Surrogate.fit

    def spy(self, rows, targets, *, steps, from_scratch, seed, weight_population=None):
        calls.append((int(rows.shape[0]), steps, from_scratch))
        return real(self, rows, targets, steps=steps, from_scratch=from_scratch, seed=seed,
                    weight_population=weight_population)

    monkeypatch.setattr(Surrogate, "fit", spy)
    p = Problem(4)
    for warm in (7, None):
        calls.clear()
        opt = _opt(method, problem=p, full_fit_until=4, initial_warm_steps=warm)
        n_obs = []
        for _ in range(8):
            s = opt.suggest()
            n_obs.append(opt.n_observations)
            for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
                opt.observe(s.trial_id, e, p.value(s.config, e), weights=p.weights(s.config, e))
        fits = [(n, c[1], c[2]) for n, c in zip([n for n in n_obs if n > 0], calls)]
        first = [f for f in fits if f[0] <= 4]
        assert len(first) >= 3 and fits[-1][0] > 4
        if warm is None:
            assert all(steps == FAST["initial_steps"] and scratch for _, steps, scratch in first)
        else:
            assert first[0][1:] == (FAST["initial_steps"], True)
            assert all(f[1:] == (warm, False) for f in first[1:])
        assert all(f[1:] == (FAST["refine_steps"], False) for f in fits if f[0] > 4)


def test_the_default_acquisition_is_eq_5_for_every_method():
    p = Problem(0)
    for m in ("fms-gmn", "dyhpo"):
        assert _opt(m, problem=p).acquisition.value == "ei-mf"


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["standin", "gmn"])
def test_quality_dyhpo_beats_random_and_fms_beats_dyhpo(encoder):
    """Mean simple regret over 4 seeds at a budget of 36 epochs (24 hub entries, 6 epochs each)."""
    regret = {m: [] for m in ("random", "dyhpo", "fms-gmn")}
    for seed in range(4):
        p = Problem(seed, max_epochs=6) if encoder == "standin" else GmnProblem(seed, max_epochs=6)
        for m in regret:
            kw = dict(n_candidates=128, initial_steps=150, refine_steps=30, lr=1e-2)
            if m == "fms-gmn" and encoder == "standin":
                kw.update(encoder=IdentityEncoder(W_DIM), graph_fn=vector_graph, starting_weights_fn=p.start_weights)
            elif m == "fms-gmn":  # the real GMNEncoder on parameter_graph(tiny_mlp)
                kw.update(model_factory=tiny_mlp, starting_weights_fn=p.start_weights)
            opt = FMSOptimizer(p.space, max_epochs=6, method=m, seed=seed, **kw)
            regret[m].append(run(opt, p, budget=36))
    mean = {m: float(np.mean(v)) for m, v in regret.items()}
    print(encoder, mean)
    assert mean["dyhpo"] < mean["random"]
    assert mean["fms-gmn"] < mean["dyhpo"]


@pytest.mark.parametrize("method", ["fms-gmn", "fms-flat"])
def test_real_weightspace_encoders_drive_the_loop(method):
    from torch import nn

    from fms_lightning.space import HubChoice

    space = SearchSpace({"model": HubChoice(["small", "wide"]), "lr": Uniform(0.0, 1.0)})

    def factory(cfg):
        h = 4 if cfg["model"] == "small" else 8
        return nn.Sequential(nn.Linear(3, h), nn.ReLU(), nn.Linear(h, 1))

    hub = {}
    for k, name in enumerate(["small", "wide"]):
        with torch.random.fork_rng():
            torch.manual_seed(k)
            hub[name] = factory({"model": name}).state_dict()
    calls = []

    def start(cfg):
        calls.append(cfg["model"])
        return hub[cfg["model"]]

    def weights(cfg, e):
        return {k: v + 0.01 * e * cfg["lr"] for k, v in hub[cfg["model"]].items()}

    if method == "fms-flat":  # a FLAT encoder reads one architecture only
        space = SearchSpace({"model": HubChoice(["small"]), "lr": Uniform(0.0, 1.0)})
    opt = FMSOptimizer(space, max_epochs=4, method=method, seed=0, model_factory=factory,
                       starting_weights_fn=start, **FAST)
    _drive(opt, 6, value=lambda c, e: c["lr"] * e, weights=weights)
    assert opt.n_observations == 6
    assert sorted(set(calls)) == sorted(calls)  # hub weights loaded once per entry


def test_training_schedule_scratch_then_warm_refits(monkeypatch):
    """Paper A.3: from scratch (initial_steps) while <= full_fit_until evaluations, then warm refits."""
    calls = []
    real = Surrogate.fit

    def spy(self, rows, y, *, steps, from_scratch, seed, weight_population=None):
        calls.append((rows.shape[0], steps, from_scratch))
        return real(self, rows, y, steps=steps, from_scratch=from_scratch, seed=seed,
                    weight_population=weight_population)

    monkeypatch.setattr(Surrogate, "fit", spy)
    opt = _opt(full_fit_until=3, initial_steps=7, refine_steps=2)
    _drive(opt, 6)
    opt.suggest()
    opt.suggest()  # no new observation: conditions on the data only
    assert calls == [(1, 7, True), (2, 7, True), (3, 7, True), (4, 2, False), (5, 2, False), (6, 2, False), (6, 0, False)]


def test_failures_teach_the_surrogate_to_avoid_failing_regions():
    space = SearchSpace({"fail": Choice(["raise", "nan", "none"]), "lr": Uniform(0.0, 1.0)})
    opt = FMSOptimizer(space, max_epochs=3, method="dyhpo", seed=0, **FAST)
    failures = 0
    for k in range(24):
        s = opt.suggest()
        if s.config["fail"] != "none":
            opt.mark_failed(s.trial_id, "planned failure")
            failures += k >= 12
        else:
            opt.observe(s.trial_id, s.epoch, s.config["lr"] + 0.1 * s.epoch)
    assert failures <= 3  # in the second half, failing configs are (almost) never suggested
    failed = [t for t in _infos(opt) if t.status is TrialStatus.FAILED]
    assert failed and all(t.epochs == 0 for t in failed)
    assert opt.training_data()[0].shape[0] == opt.n_observations + len(failed)  # each failure is a row at epoch 1


def test_trial_and_pending_report_what_the_optimizer_knows():
    opt = _opt()
    _drive(opt, 3)
    a, b = opt.suggest(), opt.suggest()
    assert [s.trial_id for s in opt.pending()] == [a.trial_id, b.trial_id]
    info = opt.trial(a.trial_id)
    assert (info.status, info.target, info.epochs) == (TrialStatus.RUNNING, a.epoch, a.epoch - 1)
    info.config["lr"] = -1.0  # a copy
    assert opt.trial(a.trial_id).config == a.config
    opt.observe(a.trial_id, a.epoch, 0.5)
    opt.mark_failed(b.trial_id, "OOM")
    assert opt.pending() == []
    assert opt.trial(a.trial_id).epochs == a.epoch and opt.trial(a.trial_id).status is TrialStatus.PAUSED
    assert (opt.trial(b.trial_id).status, opt.trial(b.trial_id).reason) == (TrialStatus.FAILED, "OOM")
    assert set(opt.trial_ids) >= {a.trial_id, b.trial_id}
    with pytest.raises(ConfigurationError, match="Unknown trial_id"):
        opt.trial(10_000)


def test_default_method_is_fms_gmn_as_in_the_tuner():
    import inspect

    from fms_lightning.tuner import FMSTuner

    default = inspect.signature(FMSOptimizer).parameters["method"].default
    assert default == inspect.signature(FMSTuner).parameters["method"].default == "fms-gmn"
    with pytest.raises(ConfigurationError, match="graph_fn.*method='dyhpo'"):
        FMSOptimizer(SPACE, max_epochs=3)  # the weight hooks are needed, and the message names the way out


@pytest.mark.parametrize("threads", [1, 2])
def test_surrogate_work_runs_with_capped_threads_and_restores_the_callers(monkeypatch, threads):
    inside = []
    fit = Surrogate.fit

    def spy(self, *args, **kwargs):
        inside.append(torch.get_num_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Surrogate, "fit", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        opt = _opt("dyhpo", surrogate_threads=threads)
        _drive(opt, 3)
        opt.predict([SPACE.sample(1, rng=np.random.default_rng(0))[0]])
        assert inside and set(inside) == {threads}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_threads_are_restored_when_the_surrogate_raises_and_none_keeps_torchs_setting(monkeypatch):
    before = torch.get_num_threads()
    seen = []

    def broken(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("boom")

    try:
        torch.set_num_threads(3)
        opt = _opt("dyhpo")
        _drive(opt, 1)
        monkeypatch.setattr(Surrogate, "fit", broken)
        with pytest.raises(RuntimeError, match="boom"):
            opt.suggest()
        assert seen == [1] and torch.get_num_threads() == 3
        opt = _opt("dyhpo", surrogate_threads=None)
        _drive(opt, 1)
        with pytest.raises(RuntimeError, match="boom"):
            opt.suggest()
        assert seen == [1, 3] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
