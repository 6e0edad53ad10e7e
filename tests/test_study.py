"""The study store: rows, snapshots, atomicity, the single-writer lock, crash consistency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fms_lightning.errors import ConfigurationError, StudyError, StudyLockedError
from fms_lightning.study import Study, TrialStatus, atomic_write


def test_trials_and_contiguous_observations(tmp_path) -> None:
    with Study(tmp_path) as study:
        a = study.add_trial({"lr": 0.1, "width": 8}, "cnn-a")
        b = study.add_trial({"lr": 0.2})
        assert (a, b) == (1, 2)
        study.add_observation(a, 1, 0.5, metrics={"val_acc": 0.5, "val_loss": 1.0})
        study.add_observation(a, 2, 0.7)
        with pytest.raises(StudyError, match="next must be 3"):
            study.add_observation(a, 4, 0.9)
        with pytest.raises(StudyError, match="next must be 1"):
            study.add_observation(b, 2, 0.9)
        with pytest.raises(StudyError, match="not finite"):
            study.add_observation(b, 1, float("nan"))
        c = study.add_trial({})
        study.add_observation(c, 2, 0.1, contiguous=False)
        study.add_observation(c, 4, 0.2, contiguous=False)
        with pytest.raises(StudyError, match="must increase"):
            study.add_observation(c, 3, 0.2, contiguous=False)
        study.add_observation(a, 2, 0.75)  # re-recording the latest epoch replaces it
        assert [(o.epoch, o.value) for o in study.observations(a)] == [(1, 0.5), (2, 0.75)]
        assert study.observations(a)[0].metrics == {"val_acc": 0.5, "val_loss": 1.0}
        study.set_status(b, TrialStatus.FAILED, reason="loss was nan")
        rec = study.trial(b)
        assert rec.status is TrialStatus.FAILED and rec.reason == "loss was nan"
        assert study.trial(a).config == {"lr": 0.1, "width": 8} and study.trial(a).hub_entry == "cnn-a"
        assert [t.trial_id for t in study.trials(TrialStatus.PENDING)] == [a, c]
        assert study.budget_used() == 4 and study.last_epoch(a) == 2
        assert study.best("max").value == 0.75 and study.best("min").value == 0.1
        with pytest.raises(ConfigurationError, match="'min' or 'max'"):
            study.best("maximize")
        with pytest.raises(StudyError, match="No trial 9"):
            study.set_status(9, "paused")


def test_snapshots_and_tuner_state_round_trip(tmp_path) -> None:
    state = {"w": torch.randn(3, 4), "b": torch.randn(4, dtype=torch.float64), "n": torch.tensor(7)}
    with Study(tmp_path) as study:
        t = study.add_trial({})
        rel0 = study.save_snapshot(t, 0, state)
        rel1 = study.save_snapshot(t, 1, state, fp16=True)
        assert study.start_weights_path(t) == rel0
        back = study.load_snapshot(rel0)
        assert all(torch.equal(back[k], state[k]) for k in state)
        half = study.load_snapshot(rel1)
        assert half["w"].dtype == torch.float16 and half["n"].dtype == torch.int64
        study.save_tuner_state({"step": 3, "tensor": torch.arange(4), "nested": {"a": [1.0, 2.0]}})
    with Study(tmp_path, readonly=True) as reader:
        loaded = reader.load_tuner_state()
        assert loaded["step"] == 3 and torch.equal(loaded["tensor"], torch.arange(4))
        with pytest.raises(StudyError, match="read-only"):
            reader.add_trial({})


def test_atomic_write_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "file.bin"

    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole"


def test_single_writer_lock(tmp_path) -> None:
    first = Study(tmp_path)
    with pytest.raises(StudyLockedError, match=f"pid {os.getpid()}"):
        Study(tmp_path)
    Study(tmp_path, readonly=True).close()  # readers are fine
    first.close()
    Study(tmp_path).close()


def test_lock_is_released_when_the_writer_is_killed(tmp_path) -> None:
    code = f"from fms_lightning.study import Study; s = Study({str(tmp_path)!r}); print('ready', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StudyLockedError):
            Study(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    Study(tmp_path).close()


WRITER = textwrap.dedent(
    """
    import sys, torch
    from fms_lightning.study import Study
    study = Study(sys.argv[1])
    tid = study.add_trial({"i": 0})
    g = torch.Generator().manual_seed(0)
    for epoch in range(1, 100000):
        rel = study.save_snapshot(tid, epoch, {"w": torch.randn(256, 256, generator=g)})
        study.add_observation(tid, epoch, float(epoch), snapshot=rel)
        if epoch == 3:
            print("going", flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.45])
def test_sigkill_at_any_moment_leaves_a_consistent_study(tmp_path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "going"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Study(tmp_path) as study:
        obs = study.observations(1)
        assert len(obs) >= 3
        assert [o.epoch for o in obs] == list(range(1, len(obs) + 1))
        for o in obs:  # every recorded row names a complete, loadable snapshot
            assert study.load_snapshot(o.snapshot)["w"].shape == (256, 256)
        # The study can be continued.
        study.add_observation(1, len(obs) + 1, 0.0)
        assert study._query("PRAGMA integrity_check")[0][0] == "ok"


def test_a_closed_study_leaves_no_wal_files_even_after_readers(tmp_path) -> None:
    """`status` (a reader) used to leave study.sqlite-wal and -shm behind."""
    with Study(tmp_path / "s") as study:
        study.add_observation(study.add_trial({"lr": 0.1}), 1, 0.5)
        with Study(tmp_path / "s", readonly=True) as reader:  # a reader while the writer is open
            assert len(reader.observations()) == 1
    with Study(tmp_path / "s", readonly=True) as reader:  # and one after
        assert len(reader.observations()) == 1
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock", "study.sqlite"]
    with Study(tmp_path / "s") as study:  # the next writer is in WAL mode again, with the rows intact
        assert study._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [o.value for o in study.observations()] == [0.5]


# ------------------------------------------------------------- hostile or damaged state files
class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("content", [os.urandom(4096), b"SQLite format 3\x00" + b"\xff" * 200, b"not a db" * 100])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_corrupt_study_database_is_one_clear_error(tmp_path, content, readonly) -> None:
    (tmp_path / "study.sqlite").write_bytes(content)
    with pytest.raises(StudyError, match=r"study\.sqlite' is corrupt or not a study database.*aside"):
        Study(tmp_path, readonly=readonly)
    if not readonly:  # the lock was released: after moving the file aside a new study opens
        (tmp_path / "study.sqlite").unlink()
        Study(tmp_path).close()


def test_an_empty_study_database_is_not_a_study_for_readers(tmp_path) -> None:
    (tmp_path / "study.sqlite").write_bytes(b"")
    with pytest.raises(StudyError, match="is not a study database: it has no study tables"):
        Study(tmp_path, readonly=True)
    Study(tmp_path).close()  # a writer makes it a new, empty study


def test_a_study_dir_that_is_a_file_or_unreadable_is_one_clear_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "afile").write_text("x")
    for readonly in (False, True):
        with pytest.raises(StudyError, match="is a file, not a folder"):
            Study(tmp_path / "afile", readonly=readonly)
    from pathlib import Path

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", denied)  # as a folder the user may not write (root bypasses chmod)
    with pytest.raises(StudyError, match="Cannot open the study.*Permission denied.*another study_dir"):
        Study(tmp_path / "locked" / "study")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unreadable_study_folder_is_one_clear_error(tmp_path) -> None:
    Study(tmp_path / "s").close()
    os.chmod(tmp_path / "s", 0)
    try:
        with pytest.raises(StudyError, match="Cannot open the study"):
            Study(tmp_path / "s")
    finally:
        os.chmod(tmp_path / "s", 0o755)


@pytest.mark.parametrize("blob", [b"garbage", b"", "payload"])
def test_a_corrupt_or_hostile_tuner_state_is_refused_clearly(tmp_path, capsys, blob) -> None:
    import io

    if blob == "payload":
        buf = io.BytesIO()
        torch.save({"x": _Payload()}, buf)
        blob = buf.getvalue()
    with Study(tmp_path) as study:
        study.save_tuner_state({"a": torch.ones(2)})
        study._conn.execute("UPDATE tuner_state SET state = ?", (blob,))
        with pytest.raises(StudyError, match=r"tuner state stored in .*study\.sqlite' cannot be loaded.*rebuilds"):
            study.load_tuner_state()
    assert "unpickled!" not in capsys.readouterr().out


def _write_snapshot(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(64, 8), "b": torch.randn(8)}, str(path))
    return path


@pytest.mark.parametrize("damage", ["truncate-data", "truncate-header", "append", "empty", "garbage-header"])
def test_damaged_snapshots_are_noticed_and_named(tmp_path, damage) -> None:
    from fms_lightning.study import check_safetensors_file, load_weights_file

    path = _write_snapshot(tmp_path)
    check_safetensors_file(path)
    data = path.read_bytes()
    damaged = {"truncate-data": data[:-17], "truncate-header": data[:20], "append": data + b"\0" * 8,
               "empty": b"", "garbage-header": (40).to_bytes(8, "little") + b"{not json" + b" " * 31 + data[48:]}[damage]
    path.write_bytes(damaged)
    for check in (check_safetensors_file, load_weights_file):
        with pytest.raises(StudyError, match=r"w\.safetensors' is (truncated|longer|corrupt)"):
            check(path)


# ------------------------------------------------------------------ one trial id, atomic writes
def test_atomic_writes_are_all_recorded_or_none(tmp_path):
    with Study(tmp_path) as study:
        with pytest.raises(RuntimeError, match="planted"), study.atomic():
            tid = study.add_trial({"lr": 0.1}, source="tuner", status="running")
            study.save_tuner_state({"a": 1})
            raise RuntimeError("planted")
        assert study.trials() == [] and study.load_tuner_state() is None
        with study.atomic():
            tid = study.add_trial({"lr": 0.1}, source="tuner", status="running")
            study.save_tuner_state({"a": 1})
        assert [t.trial_id for t in study.trials(source="tuner")] == [tid]


def test_a_trial_can_be_added_with_its_id_once(tmp_path):
    with Study(tmp_path) as study:
        assert study.next_trial_id() == 1
        assert study.add_trial({"lr": 0.1}, trial_id=4, source="tuner") == 4
        assert study.add_trial({"lr": 0.1}, trial_id=4, source="tuner") == 4  # again after a crash: the same trial
        with pytest.raises(StudyError, match="exists with another config"):
            study.add_trial({"lr": 0.2}, trial_id=4, source="tuner")
        assert study.add_trial({"lr": 0.3}) == 5 == study.next_trial_id() - 1
        assert [t.source for t in study.trials()] == ["tuner", "user"]
        assert study.trial(4).opt_trial_id == 4 and study.trial(5).opt_trial_id is None  # the deprecated view


def test_a_study_from_before_one_trial_id_reads_and_migrates(tmp_path):
    """Schema 2 kept the optimizer's id in ``opt_trial_id``; a hand-added trial had source 'tuner' and no id."""
    import sqlite3

    with Study(tmp_path) as study:
        a = study.add_trial({"lr": 0.1}, source="tuner")
        b = study.add_trial({"lr": 0.2}, source="tuner")
        study.add_observation(a, 1, 0.5)
        study.add_observation(b, 1, 0.6)
    with sqlite3.connect(tmp_path / "study.sqlite") as conn:  # as schema 2 wrote it
        conn.execute("ALTER TABLE trials ADD COLUMN opt_trial_id INTEGER")
        conn.execute("UPDATE trials SET opt_trial_id = 0 WHERE trial_id = ?", (a,))
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with Study(tmp_path, readonly=True) as reader:
        assert [t.source for t in reader.trials()] == ["tuner", "user"]
        assert reader.budget_used(source="tuner") == 1 == reader.budget_used(tuner_only=True)
    with Study(tmp_path) as study:  # a writer migrates the file once
        c = study.add_trial({"lr": 0.3}, source="tuner")
        assert [t.source for t in study.trials()] == ["tuner", "user", "tuner"]
        assert [t.trial_id for t in study.trials(source="tuner")] == [a, c]
    with Study(tmp_path, readonly=True) as reader:
        assert [t.source for t in reader.trials()] == ["tuner", "user", "tuner"]
