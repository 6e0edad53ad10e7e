"""The tuner saves the optimizer's state once per step, small, and a run stopped anywhere resumes to the same run."""

from __future__ import annotations

import io
import sqlite3

import pytest
import torch

from fms_lightning.study import Study
from fms_lightning.tuner import sync
from tests.tuner.test_core import _check_study, _tuner


class _Stop(BaseException):
    """A crash: nothing in the tuner catches it as a trial's failure."""


def _run(tmp_path, study: str, budget: int, **kw):
    return _tuner(tmp_path, budget=budget, study=study, **kw).fit()


def _record(study_dir) -> tuple[list[tuple[int, dict]], dict[tuple[int, int], float]]:
    """What a run suggested (trial ids and configs, in order) and what it observed."""
    with Study(study_dir, readonly=True) as study:
        trials = [(t.trial_id, t.config) for t in study.trials(source=sync.TUNER)]
        return trials, {(o.trial_id, o.epoch): o.value for o in study.observations()}


def _stop_after_tell(monkeypatch, n: int) -> None:
    """Stop the tuner right after its ``n``-th ``tell`` returns, before the next suggestion."""
    told = {"n": 0}
    tell = sync.tell

    def stopping(*args, **kwargs):
        tell(*args, **kwargs)
        told["n"] += 1
        if told["n"] == n:
            raise _Stop

    monkeypatch.setattr(sync, "tell", stopping)


SETTINGS = {"dyhpo": {"method": "dyhpo"}, "fms-gmn": {"method": "fms-gmn"},
            "fms-gmn-frozen": {"method": "fms-gmn", "gmn_training": "frozen"}}


@pytest.mark.parametrize("stop_after", [1, 3, 4])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_run_stopped_between_tell_and_the_next_suggestion_resumes_as_if_uninterrupted(
        tmp_path, monkeypatch, setting, stop_after) -> None:
    """The state is saved with the suggestion, not by ``tell``: the rows replay what ``tell`` added."""
    kw, budget = SETTINGS[setting], 7
    _run(tmp_path, "straight", budget, **kw)
    with monkeypatch.context() as m:
        _stop_after_tell(m, stop_after)
        with pytest.raises(_Stop):
            _run(tmp_path, "stopped", budget, **kw)
    with Study(tmp_path / "stopped", readonly=True) as study:  # stopped before the next suggestion
        assert not study.trials("running") and stop_after <= study.budget_used(source=sync.TUNER) < budget
    _run(tmp_path, "stopped", budget, **kw)
    _check_study(tmp_path / "stopped", budget)
    assert _record(tmp_path / "stopped") == _record(tmp_path / "straight")


def test_the_state_is_saved_once_per_suggestion(tmp_path, monkeypatch) -> None:
    saves = []
    save = Study.save_tuner_state
    monkeypatch.setattr(Study, "save_tuner_state", lambda self, *a, **k: (saves.append(1), save(self, *a, **k)))
    tuner = _tuner(tmp_path, method="fms-gmn", budget=6)
    tuner.fit()
    assert len(saves) == len(tuner.segments) > 1


def test_tell_saves_the_state_only_when_asked(tmp_path, monkeypatch) -> None:
    """For a caller that changed the state since the suggestion (a surrogate fit installed meanwhile)."""
    saves = []
    save = sync.save_state
    monkeypatch.setattr(sync, "save_state", lambda opt, study: (saves.append(1), save(opt, study)))
    tell = sync.tell
    monkeypatch.setattr(sync, "tell", lambda opt, study, result: tell(opt, study, result, save=True))
    tuner = _tuner(tmp_path, method="dyhpo", budget=3)
    tuner.fit()
    assert len(saves) == 2 * len(tuner.segments)


def _stored_state(study_dir) -> tuple[dict, dict[str, bytes]]:
    with sqlite3.connect(study_dir / "study.sqlite") as conn:
        state = torch.load(io.BytesIO(conn.execute("SELECT state FROM tuner_state").fetchone()[0]),
                           weights_only=True)
        blobs = dict(conn.execute("SELECT key, blob FROM tuner_blobs").fetchall())
    return state, blobs


@pytest.mark.parametrize("gmn_training", ["readout", "frozen"])
def test_the_stored_state_names_each_graph_and_the_encoder_and_stores_them_once(tmp_path, gmn_training) -> None:
    tuner = _tuner(tmp_path, method="fms-gmn", budget=4, gmn_training=gmn_training)
    tuner.fit()
    state, blobs = _stored_state(tmp_path / "study")
    feat = state["featurizer"]
    assert feat["encoder"].keys() == {"blob"} and feat["encoder"]["blob"] in blobs
    if gmn_training == "readout":
        in_memory = [g for g in feat["graphs"] if "path" not in g]
        assert in_memory and all(g.keys() == {"blob"} and g["blob"] in blobs for g in in_memory)
        assert not feat["wirings"]
        assert {k for k in blobs if k.startswith("wiring/")}
    # Continuing adds snapshots, not stored graphs: the per-step state does not hold them.
    before = {k: len(v) for k, v in blobs.items()}
    _tuner(tmp_path, method="fms-gmn", budget=8, gmn_training=gmn_training).fit()
    state, blobs = _stored_state(tmp_path / "study")
    assert all(len(blobs[k]) == n for k, n in before.items())  # written once, never again
    assert all(not isinstance(v, torch.Tensor) or v.numel() < 4096 for v in _leaves(state["featurizer"]))


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize("gmn_training", ["readout", "frozen"])
def test_a_state_with_its_graphs_inside_still_resumes_as_if_uninterrupted(tmp_path, gmn_training) -> None:
    """States saved before the graphs were stored apart hold them inline; they load as before."""
    kw = {"method": "fms-gmn", "gmn_training": gmn_training}
    first = _tuner(tmp_path, budget=4, study="old", **kw)
    first.fit()
    old = first.optimizer.state_dict(trials=False)
    assert any("x" in g for g in old["featurizer"].get("graphs", [])) or gmn_training == "frozen"
    with Study(tmp_path / "old") as study:
        study.save_tuner_state(old)
    with sqlite3.connect(tmp_path / "old" / "study.sqlite") as conn:
        conn.execute("DELETE FROM tuner_blobs")
    _run(tmp_path, "old", 7, **kw)
    _run(tmp_path, "straight", 7, **kw)
    _check_study(tmp_path / "old", 7)
    assert _record(tmp_path / "old") == _record(tmp_path / "straight")


def test_a_missing_stored_part_rebuilds_the_state_from_the_rows(tmp_path) -> None:
    _tuner(tmp_path, method="fms-gmn", budget=4).fit()
    with sqlite3.connect(tmp_path / "study" / "study.sqlite") as conn:
        conn.execute("DELETE FROM tuner_blobs WHERE key LIKE 'graph/%'")
    with pytest.warns(RuntimeWarning, match=r"stored part 'graph/.*Rebuilding it from the study's"):
        result = _tuner(tmp_path, method="fms-gmn", budget=6).fit()
    assert result.budget_used == 6
    _check_study(tmp_path / "study", 6)


def test_a_corrupt_stored_part_is_refused_and_the_state_rebuilt(tmp_path) -> None:
    _tuner(tmp_path, method="fms-gmn", budget=4).fit()
    with sqlite3.connect(tmp_path / "study" / "study.sqlite") as conn:
        conn.execute("UPDATE tuner_blobs SET blob = ? WHERE key LIKE 'encoder/%'", (b"\x80\x04garbage",))
    with pytest.warns(RuntimeWarning, match=r"part 'encoder/.*cannot be loaded.*Rebuilding it from the study's"):
        _tuner(tmp_path, method="fms-gmn", budget=6).fit()
    _check_study(tmp_path / "study", 6)


def test_snapshots_committed_after_the_stored_state_are_replayed_in_commit_order(tmp_path, monkeypatch) -> None:
    """With several segments in flight, more than one may be committed after the last save: a resume
    hands their snapshots to the featurizer in the order they were committed, as ``tell`` did."""
    saved = []
    save = sync.save_state

    def keep(opt, study):
        blobs: dict = {}
        saved.append((opt.state_dict(trials=False, blobs=blobs), blobs))
        save(opt, study)

    monkeypatch.setattr(sync, "save_state", keep)
    tuner = _tuner(tmp_path, method="fms-gmn", budget=9)
    tuner.fit()
    early, blobs = saved[2]
    with Study(tmp_path / "study") as study:
        study.save_tuner_state(early, blobs)
        committed = [str(study.path / o.snapshot) for o in study.observations(order="commit")]
        by_trial = [str(study.path / o.snapshot) for o in study.observations()]
    late = [p for p in committed if p not in early["weight_keys"]]  # committed after the early save
    assert late != [p for p in by_trial if p in late]  # in another order than the trials': the test can tell
    again = _tuner(tmp_path, method="fms-gmn", budget=9)
    again.fit()  # nothing left to train: the optimizer is rebuilt from the early state and the rows
    assert again.optimizer.featurizer.keys == tuner.optimizer.featurizer.keys  # slot order, as uninterrupted
    assert again.optimizer.state_dict(trials=False)["weight_keys"] == tuner.optimizer.state_dict(trials=False)["weight_keys"]
