"""The optimizer's trials: one id chosen by the caller, and a registry rebuilt from a durable record."""

from __future__ import annotations

import pytest
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import Best, FMSOptimizer, TrialStatus
from tests.surrogate.synthetic import Problem
from tests.optimizer.test_core import FAST, SPACE, _f, _opt


def test_new_trials_take_the_id_the_caller_names():
    opt = _opt()
    s = opt.suggest(new_trial_id=7)
    assert s.trial_id == 7 and opt.trial_ids == [7]
    rand = _opt("random")
    assert rand.suggest(new_trial_id=3).trial_id == 3
    assert rand.suggest().trial_id == 4  # default: one past the largest
    with pytest.raises(ConfigurationError, match="new_trial_id=3 is already a trial"):
        rand.suggest(new_trial_id=3)


def test_best_is_a_named_tuple_in_the_users_units():
    opt = _opt(mode="min")
    s = opt.suggest()
    opt.observe(s.trial_id, 1, 2.5)
    best = opt.best()
    assert isinstance(best, Best) and best.value == 2.5 and best.epoch == 1 and best.trial_id == s.trial_id
    assert best == (s.trial_id, s.config, 1, 2.5)


def _drive_and_record(opt, n, p, record, fail_every=5):
    """Drive ``opt`` for ``n`` suggestions; ``record[tid]`` keeps what a study's rows would."""
    for k in range(n):
        s = opt.suggest()
        rec = record.setdefault(s.trial_id, {"config": s.config, "values": [], "weights": []})
        if k % fail_every == fail_every - 1:
            opt.mark_failed(s.trial_id, "planned")
            continue
        for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
            v, w = p.value(s.config, e), p.weights(s.config, e)
            opt.observe(s.trial_id, e, v, w)
            rec["values"].append(v)
            rec["weights"].append(w)


@pytest.mark.parametrize("method", ["dyhpo", "fms-flat", "random"])
def test_a_state_without_trials_plus_the_trials_restored_continues_identically(method):
    """Resume-equals-uninterrupted at the optimizer's level: the trials come back from their record."""
    p = Problem(1)
    a = _opt(method, seed=3, problem=p)
    record: dict[int, dict] = {}
    _drive_and_record(a, 9, p, record)
    a.suggest()  # one pending
    state = a.state_dict(trials=False)
    assert "trials" not in state
    b = _opt(method, seed=3, problem=p)
    b.load_state_dict(state)
    for tid in a.trial_ids:
        info = a.trial(tid)
        failed_at = info.epochs + 1 if info.status is TrialStatus.FAILED else None
        b.restore_trial(tid, info.config, values=record.get(tid, {}).get("values", []),
                        weights=record.get(tid, {}).get("weights", []), status=info.status, target=info.target,
                        reason=info.reason, failed_at=failed_at)
    assert [b.trial(t) for t in b.trial_ids] == [a.trial(t) for t in a.trial_ids]
    assert b.pending() == a.pending()
    for _ in range(3):
        sa, sb = a.suggest(), b.suggest()
        assert sa == sb
        for opt, s in ((a, sa), (b, sb)):
            for e in range(opt.trial(s.trial_id).epochs + 1, s.epoch + 1):
                opt.observe(s.trial_id, e, p.value(s.config, e), p.weights(s.config, e))
    if method != "random":
        torch.testing.assert_close(a.training_data()[0], b.training_data()[0])


def test_restore_trial_refuses_a_taken_id_and_more_weights_than_values():
    opt = FMSOptimizer(SPACE, max_epochs=3, method="dyhpo", **FAST)
    cfg = SPACE.sample(1, rng=__import__("numpy").random.default_rng(0))[0]
    opt.restore_trial(4, cfg, values=[_f(cfg, 1)], status="paused")
    assert opt.trial(4).epochs == 1 and opt.trial(4).status is TrialStatus.PAUSED
    with pytest.raises(ConfigurationError, match="already a trial"):
        opt.restore_trial(4, cfg)
    with pytest.raises(ConfigurationError, match="2 weights for 1 values"):
        opt.restore_trial(5, cfg, values=[0.1], weights=[None, None])
