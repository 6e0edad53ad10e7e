"""The study's rows are the only record of a trial: resuming rebuilds the optimizer's trials from them."""

from __future__ import annotations

import sqlite3

import pytest

from fms_lightning.study import Study
from fms_lightning.tuner import sync
from tests.tuner.test_core import _check_study, _tuner


def _rows(study_dir):
    with Study(study_dir, readonly=True) as study:
        return {(o.trial_id, o.epoch): o.value for o in study.observations()}


def _as_schema_2(study_dir, state) -> None:
    """Rewrite a study as the tuner of schema 2 left it: the optimizer's ids, and its trials in the stored state."""
    old = dict(state, version=1)
    old.pop("weight_keys")
    old["trials"] = {tid - 1: t for tid, t in state["trials"].items()}  # the optimizer numbered its trials 0, 1, ...
    with Study(study_dir) as study:
        study.save_tuner_state(old)
    with sqlite3.connect(study_dir / "study.sqlite") as conn:
        conn.execute("ALTER TABLE trials ADD COLUMN opt_trial_id INTEGER")
        conn.execute("UPDATE trials SET opt_trial_id = trial_id - 1 WHERE source = 'tuner'")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


@pytest.mark.parametrize("method", ["dyhpo", "fms-gmn"])
def test_a_study_written_before_one_trial_id_resumes_as_if_uninterrupted(tmp_path, method) -> None:
    first = _tuner(tmp_path, method=method, budget=4, study="old")
    first.fit()
    _as_schema_2(tmp_path / "old", first.optimizer.state_dict())
    _tuner(tmp_path, method=method, budget=7, study="old").fit()
    _tuner(tmp_path, method=method, budget=7, study="straight").fit()
    _check_study(tmp_path / "old", 7)
    assert _rows(tmp_path / "old") == _rows(tmp_path / "straight")


def test_the_stored_state_holds_no_trials_and_the_rows_give_them_back(tmp_path) -> None:
    tuner = _tuner(tmp_path, budget=5)
    tuner.fit()
    with Study(tmp_path / "study", readonly=True) as study:
        state = study.load_tuner_state()
        assert "trials" not in state and "rng" in state
        assert [t.trial_id for t in study.trials(source=sync.TUNER)] == tuner.optimizer.trial_ids
    again = _tuner(tmp_path, budget=5)
    again.fit()  # nothing left to train: the optimizer is only rebuilt
    assert [again.optimizer.trial(t) for t in again.optimizer.trial_ids] == [
        tuner.optimizer.trial(t) for t in tuner.optimizer.trial_ids]
