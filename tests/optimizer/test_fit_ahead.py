"""FMSOptimizer.fit_ahead: fit while a trial runs; the next suggestion only conditions on its epochs."""

from __future__ import annotations

import copy

import pytest
import torch

from fms_lightning.optimizer import FMSOptimizer
from tests.optimizer.test_core import _f, _opt
from tests.surrogate.synthetic import Problem

#: Small fits: two from-scratch fits, then warm-started refits.
AHEAD = dict(full_fit_until=2)


def _params(opt: FMSOptimizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in opt.surrogate.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _observe(opt, s, value=_f, weights=None) -> None:
    opt.observe(s.trial_id, s.epoch, value(s.config, s.epoch), None if weights is None else weights(s.config, s.epoch))


def _drive_ahead(opt, n, value=_f, weights=None):
    """suggest, fit_ahead while the trial "trains", observe: the tuner's loop with fit_while_training."""
    out = []
    for _ in range(n):
        s = opt.suggest()
        opt.fit_ahead()
        _observe(opt, s, value, weights)
        out.append(s)
    return out


def test_the_next_fit_only_conditions_on_the_running_trials_epochs() -> None:
    opt = _opt(seed=1, **AHEAD)
    _drive_ahead(opt, 4)
    s = opt.suggest()
    twin = copy.deepcopy(opt)
    assert opt.fit_ahead()
    ahead = _params(opt)
    twin._fitted_at = -1  # the fit the next suggest() would make without fit_ahead, on the same data
    twin._fit()
    assert _same(ahead, _params(twin))  # fit_ahead() is that fit, made early
    _observe(opt, s)
    opt.suggest()
    assert _same(_params(opt), ahead)  # no optimiser steps: only conditioned on the new epoch
    assert opt.surrogate._train[0].shape[0] == opt.n_observations


def test_a_suggestion_without_fit_ahead_refits() -> None:
    """The contrast to the test above: with the same data, a plain suggest() moves the parameters."""
    opt = _opt(seed=1, **AHEAD)
    _drive_ahead(opt, 4)
    s = opt.suggest()
    opt.fit_ahead()
    ahead = _params(opt)
    opt._ahead = None  # as if fit_ahead() had not been asked for the next fit
    _observe(opt, s)
    opt.suggest()
    assert not _same(_params(opt), ahead)


def test_other_new_data_refits_as_usual() -> None:
    opt = _opt(seed=2, **AHEAD)
    _drive_ahead(opt, 4)
    running = opt.suggest()
    other = opt.suggest()  # a second trial starts after fit_ahead(): it is not covered
    opt.fit_ahead()
    opt._ahead = (opt._ahead[0], {running.trial_id: opt.trial(running.trial_id).epochs})
    ahead = _params(opt)
    _observe(opt, running)
    _observe(opt, other)
    opt.suggest()
    assert not _same(_params(opt), ahead)
    # A failure of the running trial is new data that is not an observation: a refit too.
    running = opt.suggest()
    opt.fit_ahead()
    ahead = _params(opt)
    opt.mark_failed(running.trial_id, "planted")
    opt.suggest()
    assert not _same(_params(opt), ahead)


def test_fit_ahead_is_deterministic_and_fits_once_per_observation() -> None:
    a, b = _opt(seed=4, **AHEAD), _opt(seed=4, **AHEAD)
    assert _drive_ahead(a, 9) == _drive_ahead(b, 9)
    assert _same(_params(a), _params(b))
    a.suggest()
    assert a.fit_ahead() and not a.fit_ahead()  # the second has nothing new to fit
    assert _opt(seed=4, **AHEAD).fit_ahead() is False  # nothing observed yet


def test_fit_ahead_is_a_no_op_for_random_search() -> None:
    opt = _opt("random")
    s = opt.suggest()
    opt.observe(s.trial_id, 1, _f(s.config, 1))
    opt.suggest()
    assert opt.fit_ahead() is False and opt.surrogate.model is None and opt._ahead is None


@pytest.mark.parametrize("method", ["dyhpo", "fms-flat"])
@pytest.mark.parametrize("crash", ["while-training", "after-observing"])
def test_a_state_round_trip_continues_as_uninterrupted(method, crash, tmp_path) -> None:
    """The tuner saves the state after a suggestion (then trains) and after observing; both resume identically."""
    p = Problem(1)
    a = _opt(method, seed=3, problem=p, **AHEAD)
    _drive_ahead(a, 6, p.value, p.weights)
    s = a.suggest()
    if crash == "while-training":
        torch.save(a.state_dict(), tmp_path / "opt.pt")
    a.fit_ahead()
    _observe(a, s, p.value, p.weights)
    if crash == "after-observing":
        torch.save(a.state_dict(), tmp_path / "opt.pt")
    b = _opt(method, seed=3, problem=p, **AHEAD)
    b.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    if crash == "while-training":  # b trains the pending trial again, fitting ahead meanwhile
        b.fit_ahead()
        _observe(b, s, p.value, p.weights)
    for _ in range(3):
        sa, sb = a.suggest(), b.suggest()
        assert sa == sb and _same(_params(a), _params(b))  # the parameters each suggestion was made with
        for opt, s in ((a, sa), (b, sb)):
            opt.fit_ahead()
            _observe(opt, s, p.value, p.weights)


def test_nothing_is_fit_ahead_while_fits_start_from_scratch() -> None:
    opt = _opt(seed=1, full_fit_until=5)
    _drive_ahead(opt, 3)
    s = opt.suggest()
    before = _params(opt)
    assert opt.fit_ahead() is False and opt._ahead is None
    _observe(opt, s)
    opt.suggest()  # the usual from-scratch fit
    assert not _same(_params(opt), before)
