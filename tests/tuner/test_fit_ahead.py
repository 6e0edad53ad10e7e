"""Fitting the surrogate while a segment trains (``FMSTuner(fit_while_training=...)``, a forked process)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.storage import Storage
from fms_lightning.study import Study
from fms_lightning.tuner import segment
from fms_lightning.tuner._ahead import FitAhead
from fms_lightning.tuner._settings import resolve_fit_while_training
from tests.optimizer.test_fit_ahead import AHEAD, _drive_ahead, _observe, _params, _same
from tests.optimizer.test_core import FAST, _f, _opt
from tests.surrogate.synthetic import GmnProblem, tiny_mlp
from fms_lightning.tuner import FMSTuner
from tests import tiny_task


def _tuner(tmp_path, *, budget, study="study", **kw) -> FMSTuner:
    """The tiny task with from-scratch fits up to 2 observations only, so that most fits are made ahead."""
    hub = tiny_task.make_hub(tmp_path / "hub")
    return FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc",
                    mode="max", budget_epochs=budget, max_epochs_per_trial=3, method="dyhpo",
                    study_dir=tmp_path / study, seed=0, optimizer_kwargs={**tiny_task.FAST_OPT, "full_fit_until": 2},
                    progress=False, **kw)


def _running_optimizer(gmn_training: str | None = None) -> tuple[FMSOptimizer, object, Callable, Callable | None]:
    """An optimizer with observations and one trial running, and its value and weights functions."""
    if gmn_training is None:
        opt, value, weights = _opt(seed=1, **AHEAD), _f, None
    else:  # the real GMN on tiny MLPs
        p = GmnProblem(0)
        opt = FMSOptimizer(p.space, max_epochs=5, method="fms-gmn", seed=1, model_factory=tiny_mlp,
                           starting_weights_fn=p.start_weights, gmn_training=gmn_training, **FAST, **AHEAD)
        value, weights = p.value, p.weights
    _drive_ahead(opt, 4, value, weights)
    return opt, opt.suggest(), value, weights


@pytest.mark.parametrize("gmn_training", [None, "readout", "full"])
def test_the_forked_fit_equals_fitting_in_this_process_and_leaves_its_rng_and_threads(gmn_training) -> None:
    here, s, value, weights = _running_optimizer(gmn_training)
    forked, s_forked, _, _ = _running_optimizer(gmn_training)  # its twin (deterministic)
    assert s_forked == s and _same(_params(here), _params(forked))
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    ahead = FitAhead(forked)
    assert ahead.start()
    seconds = ahead.finish()
    assert seconds is not None and seconds > 0
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert here.fit_ahead()
    assert _same(_params(here), _params(forked)) and forked._ahead == here._ahead
    for _ in range(2):
        for opt in (here, forked):
            _observe(opt, s, value, weights)
        s = here.suggest()
        assert forked.suggest() == s
        assert _same(_params(here), _params(forked))
        assert here.fit_ahead()
        ahead = FitAhead(forked)
        ahead.start()
        assert ahead.finish() is not None
        assert _same(_params(here), _params(forked))


def _boom(self) -> bool:
    raise RuntimeError("planted failure")


def _die(self) -> bool:
    os._exit(3)


@pytest.mark.parametrize(("fit_ahead", "match"), [(_boom, "RuntimeError: planted failure"),
                                                  (_die, "without a result \\(exit code 3\\)")])
def test_a_failed_fit_ahead_warns_and_changes_nothing(monkeypatch, fit_ahead, match) -> None:
    opt, s, _, _ = _running_optimizer()
    before = _params(opt)
    monkeypatch.setattr(FMSOptimizer, "fit_ahead", fit_ahead)  # the forked child inherits it
    ahead = FitAhead(opt)
    ahead.start()
    with pytest.warns(RuntimeWarning, match=match):
        assert ahead.finish() is None
    assert opt._ahead is None and _same(_params(opt), before)
    monkeypatch.undo()
    _observe(opt, s)
    opt.suggest()  # fits as usual
    assert not _same(_params(opt), before)


def test_a_fit_ahead_must_be_adopted_before_new_observations() -> None:
    opt, s, _, _ = _running_optimizer()
    ahead = FitAhead(opt)
    ahead.start()
    _observe(opt, s)
    with pytest.raises(ConfigurationError, match="adopt the fit before observing"):
        ahead.finish()


def test_fitting_while_training_changes_nothing_that_is_trained(tmp_path) -> None:
    """Every segment, trained again from the same checkpoints without a fit alongside, gives the same epochs."""
    tuner = _tuner(tmp_path, budget=6, fit_while_training=True)
    tuner.fit()
    assert len(tuner.fit_ahead_seconds) == 4 and all(f is not None for f, _ in tuner.fit_ahead_seconds)
    replay = replace(tuner.runner, storage=Storage(tmp_path / "replay"))
    for seg in tuner.segments:
        again = replay.run(seg.spec)
        assert [(r.epoch, r.value, r.metrics) for r in again.records] == [
            (r.epoch, r.value, r.metrics) for r in seg.records]
        for a, b in zip(seg.records, again.records):
            trained, retrained = load_file(tmp_path / "study" / a.snapshot), load_file(replay.storage.local_path(b.snapshot))
            assert trained.keys() == retrained.keys()
            assert all(torch.equal(trained[k], retrained[k]) for k in trained)


def _history(study_dir) -> list[tuple[dict, list[float]]]:
    with Study(study_dir, readonly=True) as study:
        return [(t.config, [o.value for o in study.observations(t.trial_id)]) for t in study.trials()]


@pytest.mark.parametrize("stop", ["between-fits", "while-training"])
def test_a_continued_study_equals_an_uninterrupted_one(tmp_path, monkeypatch, stop) -> None:
    _tuner(tmp_path, budget=7, study="straight", fit_while_training=True).fit()
    if stop == "between-fits":
        _tuner(tmp_path, budget=4, study="pieces", fit_while_training=True).fit()
    else:  # Ctrl-C during the fifth segment, while the surrogate is fit in the other process
        run, calls = segment.SegmentRunner.run, []

        def interrupted(self, spec):
            calls.append(spec)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return run(self, spec)

        monkeypatch.setattr(segment.SegmentRunner, "run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _tuner(tmp_path, budget=7, study="pieces", fit_while_training=True).fit()
        monkeypatch.undo()
    _tuner(tmp_path, budget=7, study="pieces", fit_while_training=True).fit()
    assert _history(tmp_path / "pieces") == _history(tmp_path / "straight")


def test_fit_while_training_resolves_and_refuses_what_cannot_work() -> None:
    assert resolve_fit_while_training("auto", "local", "fms-gmn") is True
    assert resolve_fit_while_training("auto", "local", "random") is False
    assert resolve_fit_while_training("auto", "ray", "dyhpo") is False
    assert resolve_fit_while_training(False, "local", "dyhpo") is False
    with pytest.raises(ConfigurationError, match="executor='local'"):
        resolve_fit_while_training(True, "ray", "dyhpo")
    with pytest.raises(ConfigurationError, match="True, False or 'auto'"):
        resolve_fit_while_training("yes", "local", "dyhpo")


def test_the_recipe_key_reaches_the_tuner(tmp_path) -> None:
    from fms_lightning.recipe_tune import tuner_from_recipe
    from tests.test_recipe_tune import _tiny_hub_recipe

    recipe = _tiny_hub_recipe(tmp_path, trusted_factories=["tests.tiny_task:make_mlp"], method="dyhpo")
    assert tuner_from_recipe(recipe)[0].fit_while_training is False  # the default
    assert tuner_from_recipe({**recipe, "fit_while_training": "auto"})[0].fit_while_training is True
    assert tuner_from_recipe({**recipe, "fit_while_training": "auto", "method": "random"})[0].fit_while_training is False
    assert tuner_from_recipe({**recipe, "fit_while_training": True})[0].fit_while_training is True
    with pytest.raises(ConfigurationError, match="fit_while_training"):
        tuner_from_recipe({**recipe, "fit_while_training": "sometimes"})


def test_a_process_that_may_not_fork_trains_without_fitting_ahead(tmp_path, monkeypatch) -> None:
    import multiprocessing.process

    def refuse(self):
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    tuner = _tuner(tmp_path, budget=3, fit_while_training=True)
    with pytest.warns(RuntimeWarning, match="no process could be started"):
        result = tuner.fit()
    assert result.budget_used == 3 and tuner.fit_ahead_seconds == []
