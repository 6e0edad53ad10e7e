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


CASES = [(setting, stop_after, 7) for setting in SETTINGS for stop_after in (1, 3, 4)] + [
    (setting, 12, 14) for setting in ("dyhpo", "fms-gmn")]  # past full_fit_until: the fits are warm-started


@pytest.mark.parametrize(("setting", "stop_after", "budget"), CASES)
def test_a_run_stopped_between_tell_and_the_next_suggestion_resumes_as_if_uninterrupted(
        tmp_path, monkeypatch, setting, stop_after, budget) -> None:
    """The state is saved with the suggestion, not by ``tell``: the rows replay what ``tell`` added."""
    kw = SETTINGS[setting]
    straight = _tuner(tmp_path, budget=budget, study="straight", **kw)
    straight.fit()
    with monkeypatch.context() as m:
        _stop_after_tell(m, stop_after)
        with pytest.raises(_Stop):
            _run(tmp_path, "stopped", budget, **kw)
    with Study(tmp_path / "stopped", readonly=True) as study:  # stopped before the next suggestion
        assert not study.trials("running") and stop_after <= study.budget_used(source=sync.TUNER) < budget
    resumed = _tuner(tmp_path, budget=budget, study="stopped", **kw)
    resumed.fit()
    _check_study(tmp_path / "stopped", budget)
    assert _record(tmp_path / "stopped") == _record(tmp_path / "straight")
    # The optimizer itself ends the same, bit for bit: its random stream, its surrogate, its snapshots.
    ends = [t.optimizer.state_dict(trials=False) for t in (resumed, straight)]
    assert ends[0]["rng"] == ends[1]["rng"] and ends[0]["fitted_at"] == ends[1]["fitted_at"]
    _assert_same(ends[0]["surrogate"], ends[1]["surrogate"])
    if ends[1]["featurizer"] is not None:
        _assert_same(ends[0]["featurizer"].get("keys"), ends[1]["featurizer"].get("keys"))


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_the_state_is_saved_once_per_suggestion_and_never_by_tell(tmp_path, monkeypatch) -> None:
    where: list[str] = []
    saves: list[str] = []
    save = sync.save_state
    monkeypatch.setattr(sync, "save_state", lambda opt, study: (saves.append(where[-1] if where else ""),
                                                                save(opt, study)))
    for name in ("start_segment", "tell"):
        def inside(*a, _fn=getattr(sync, name), _name=name, **k):
            where.append(_name)
            try:
                return _fn(*a, **k)
            finally:
                where.pop()
        monkeypatch.setattr(sync, name, inside)
    tuner = _tuner(tmp_path, method="fms-gmn", budget=6)
    tuner.fit()
    assert saves.count("start_segment") == len(tuner.segments) > 1 and "tell" not in saves


def test_a_segment_is_committed_with_the_state_only_when_asked(tmp_path, monkeypatch) -> None:
    """For a caller that changed the state since the suggestion (a surrogate fit installed meanwhile)."""
    saves = []
    save = sync.save_state
    monkeypatch.setattr(sync, "save_state", lambda opt, study: (saves.append(study._tx is not None), save(opt, study)))
    commit = sync.commit_segment
    tuner = _tuner(tmp_path, method="dyhpo", budget=3)
    monkeypatch.setattr(sync, "commit_segment", lambda *a, **k: commit(*a, **{**k, "opt": tuner.optimizer}))
    tuner.fit()
    assert len(saves) == 2 * len(tuner.segments) and all(saves)  # each inside its transaction


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


def test_snapshots_committed_after_the_stored_state_are_replayed_in_commit_order(tmp_path) -> None:
    """With several segments in flight, more than one may be committed after the last save: a resume
    hands their snapshots to the featurizer in the order they were committed, as ``tell`` did."""
    from fms_lightning.surrogate.weights import content_key
    from tests import tiny_task

    tuner = _tuner(tmp_path, method="fms-gmn", budget=4)
    configs = {"mlp8": {"model": "mlp8", "lr": 0.05, "batch_size": 16},
               "mlp16": {"model": "mlp16", "lr": 0.01, "batch_size": 32}}

    def weights(entry, seed):
        torch.manual_seed(seed)
        return tiny_task.make_mlp(int(entry[3:])).state_dict()

    with Study(tmp_path / "study") as study:
        ids = {entry: study.add_trial(config, entry, source=sync.TUNER) for entry, config in configs.items()}
        order = [("mlp16", 1), ("mlp8", 1), ("mlp16", 2), ("mlp8", 2)]  # not the trials' order
        for seed, (entry, epoch) in enumerate(order):
            rel = study.save_snapshot(ids[entry], epoch, weights(entry, seed))
            study.commit_segment(ids[entry], [{"epoch": epoch, "value": 0.5, "snapshot": rel}])
        opt = tuner._new_optimizer()
        sync._restore_trials(opt, study, study.trials(source=sync.TUNER), random=False, max_epochs=3)
    expected = [content_key(weights(entry, seed)) for seed, (entry, _) in enumerate(order)]
    assert [k for k in opt.featurizer.keys if k in expected] == expected
