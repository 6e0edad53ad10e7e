"""FMSTuner against damaged state, shared storage, leftovers of killed runs, and repeated SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fms_lightning.errors import ConfigurationError, StudyError, TrialFailedError
from fms_lightning.study import Study, TrialStatus
from fms_lightning.tuner import FMSTuner
from tests import tiny_task
from tests.tuner.test_core import _check_study

REPO = Path(__file__).resolve().parents[2]


def _tuner(tmp_path, *, budget=6, study="study", seed=0, method="dyhpo", **kw) -> FMSTuner:
    hub = tiny_task.make_hub(tmp_path / "hub")
    kw.setdefault("optimizer_kwargs", tiny_task.FAST_OPT)
    return FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                    budget_epochs=budget, max_epochs_per_trial=3, method=method, study_dir=tmp_path / study,
                    seed=seed, progress=False, **kw)


def _rows(study_dir: Path) -> dict[tuple[int, int], tuple[float, str | None]]:
    with Study(study_dir, readonly=True) as study:
        return {(o.trial_id, o.epoch): (o.value, o.snapshot) for o in study.observations()}


# ------------------------------------------------------------------ a study owns its storage folder
def test_two_studies_on_one_storage_keep_their_own_checkpoints(tmp_path) -> None:
    store = tmp_path / "shared"
    for name, seed in (("A", 0), ("B", 1)):
        _tuner(tmp_path, study=name, seed=seed, storage=store).fit()
    ids = set()
    for name in "AB":
        with Study(tmp_path / name, readonly=True) as study:
            prefix = study.get_meta("study_id")
            ids.add(prefix)
            assert prefix.startswith(f"{name}-")
            committed = 0
            for t in study.trials():
                found = study.checkpoint(t.trial_id)
                if found is None:
                    continue
                epoch, rel = found
                ckpt = torch.load(store / prefix / rel, map_location="cpu", weights_only=True)
                # The checkpoint is this study's trial: its optimizer ran with the trial's learning rate.
                assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(t.config["lr"])
                assert ckpt["epoch"] == epoch == study.last_epoch(t.trial_id)
                committed += 1
            assert committed >= 2
    assert len(ids) == 2 and {p.name for p in store.iterdir()} == ids  # nothing at the storage root


CONCURRENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from tests import tiny_task
    from fms_lightning.tuner import FMSTuner
    hub = tiny_task.make_hub(Path({hub!r}))
    FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
             budget_epochs=8, max_epochs_per_trial=3, method="dyhpo", study_dir={study!r}, seed={seed},
             storage={storage!r}, optimizer_kwargs=tiny_task.FAST_OPT, progress=False).fit()
    print("finished", flush=True)
    """
)


@pytest.mark.slow
def test_two_tuners_at_once_on_one_storage_keep_their_own_checkpoints(tmp_path) -> None:
    """The issue's reproduction: two studies tuned at the same time with one storage= folder."""
    tiny_task.make_hub(tmp_path / "hub")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT.format(
        repo=str(REPO), hub=str(tmp_path / "hub"), study=str(tmp_path / name), seed=seed,
        storage=str(tmp_path / "shared"))], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, seed in (("A", 0), ("B", 1))]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert "finished" in out, err[-2000:]
    for name in "AB":
        _check_study(tmp_path / name, 8)
        with Study(tmp_path / name, readonly=True) as study:
            own = tmp_path / "shared" / study.get_meta("study_id")
            for t in study.trials():
                found = study.checkpoint(t.trial_id)
                if found is not None:
                    ckpt = torch.load(own / found[1], map_location="cpu", weights_only=True)
                    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(t.config["lr"])


def test_a_copy_of_a_study_cannot_share_its_storage_folder_at_once(tmp_path) -> None:
    import fcntl

    tuner = _tuner(tmp_path, budget=1, storage=tmp_path / "shared")
    tuner.fit()
    with Study(tmp_path / "study", readonly=True) as study:
        lock = tmp_path / "shared" / study.get_meta("study_id") / ".lock"
    with open(lock, "a+") as fh:  # as a second tuner on a copy of the study folder would hold it
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StudyError, match="in use by another tuner whose study has the same id"):
            _tuner(tmp_path, budget=2, storage=tmp_path / "shared").fit()


# ------------------------------------------------------------------ the rows are the source of truth
@pytest.mark.parametrize("damage", ["garbage", "deleted", "wrong-shape"])
def test_a_corrupt_tuner_state_is_rebuilt_from_the_rows(tmp_path, damage) -> None:
    _tuner(tmp_path, budget=4).fit()
    before = _rows(tmp_path / "study")
    with sqlite3.connect(tmp_path / "study" / "study.sqlite") as conn:
        if damage == "deleted":
            conn.execute("DELETE FROM tuner_state")
        else:
            import io

            buf = io.BytesIO()
            torch.save({"trials": {0: {"config": 1}}, "rng": 3}, buf)
            conn.execute("UPDATE tuner_state SET state = ?",
                         (b"\x80\x04garbage" if damage == "garbage" else buf.getvalue(),))
        # A trial that was running when the tuner stopped: it is trained first after the rebuild.
        conn.execute("UPDATE trials SET status = 'running' WHERE trial_id = (SELECT MAX(trial_id) FROM trials)")
    with pytest.warns(RuntimeWarning, match=r"(tuner state|no tuner state).*Rebuilding it from the study's"):
        result = _tuner(tmp_path, budget=8).fit()
    assert result.budget_used == 8
    _check_study(tmp_path / "study", 8)
    after = _rows(tmp_path / "study")
    assert all(after[k] == v for k, v in before.items())  # no committed observation lost or changed
    with Study(tmp_path / "study", readonly=True) as study:
        assert study.load_tuner_state() is not None  # saved again
        assert not study.trials(TrialStatus.RUNNING)


def test_a_truncated_checkpoint_fails_its_trial_naming_the_file(tmp_path) -> None:
    tuner = _tuner(tmp_path)
    config = {"model": "mlp8", "lr": 0.05, "batch_size": 16}
    with Study(tmp_path / "study") as study:
        sid = study.add_trial(config, "mlp8", source="tuner")
        tiny_task.train_segment(tuner, study, sid, config, 1)
        _, rel = study.checkpoint(sid)
        ckpt = tmp_path / "study" / rel
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        with pytest.raises(TrialFailedError, match=r"checkpoint '.*trial_00001/epoch_0001\.ckpt' is truncated"):
            tiny_task.train_segment(tuner, study, sid, config, 2)
        assert [o.epoch for o in study.observations(sid)] == [1]  # its recorded epoch is kept
        ckpt.unlink()
        with pytest.raises(TrialFailedError, match=r"epoch_0001\.ckpt' is missing"):
            tiny_task.train_segment(tuner, study, sid, config, 2)


def test_damaged_snapshots_are_noticed_and_export_best_refuses_them(tmp_path) -> None:
    result = _tuner(tmp_path, budget=3).fit()
    best = Path(result.best_checkpoint)
    good = best.read_bytes()
    best.write_bytes(good[:-10])
    with pytest.raises(StudyError, match=r"is truncated: its header promises \d+ bytes, the file has \d+"):
        result.export_best(tmp_path / "export")
    assert not (tmp_path / "export" / "weights.safetensors").exists()
    with pytest.warns(RuntimeWarning, match=r"1 weight snapshot\(s\) of the study are damaged.*truncated"):
        _tuner(tmp_path, budget=3).fit()
    best.write_bytes(good)
    assert (result.export_best(tmp_path / "export") / "weights.safetensors").read_bytes() == good


# ------------------------------------------------------------------ leftovers of killed runs
def test_leaked_scratch_folders_are_removed_on_the_next_start(tmp_path, monkeypatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f"fms-segment-{dead.pid}-abc", f"fms-upload-{dead.pid}-def", f"fms-segment-{live.pid}-ghi",
                     "fms-segment-oldstyle"):
            (scratch / name).mkdir()
            (scratch / name / "epoch_0001.ckpt").write_bytes(b"x")
        old = time.time() - 2 * 24 * 3600
        os.utime(scratch / "fms-segment-oldstyle", (old, old))
        _tuner(tmp_path, budget=1).fit()
        left = sorted(p.name for p in scratch.glob("fms-*"))
        assert left == [f"fms-segment-{live.pid}-ghi"]  # only the live process's folder, and none of ours
    finally:
        live.kill()
        live.wait()


def test_superseded_checkpoints_are_removed_on_start(tmp_path) -> None:
    _tuner(tmp_path, budget=4).fit()
    study_dir = tmp_path / "study"
    with Study(study_dir, readonly=True) as study:
        committed = {study_dir / study.checkpoint(t.trial_id)[1] for t in study.trials()}
    strays = []
    for path in committed:
        for name in ("epoch_0009.ckpt", f".{path.name}.tmp-1-2"):
            strays.append(path.parent / name)
            strays[-1].write_bytes(b"left by a killed run")
    _tuner(tmp_path, budget=4).fit()  # nothing left to train: only the start-up clean-up runs
    assert not any(p.exists() for p in strays)
    assert all(p.is_file() for p in committed)
    assert {p for p in (study_dir / "checkpoints").rglob("*") if p.is_file()} == committed


def test_max_consecutive_failures_is_checked(tmp_path) -> None:
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ConfigurationError, match="max_consecutive_failures must be an integer >= 1"):
            _tuner(tmp_path, max_consecutive_failures=bad)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"optimizer_kwargs": {"bogus_option": 1}}, r"Unknown optimizer option 'bogus_option'.*n_candidates"),
    ({"optimizer_kwargs": {"n_candidates": "many"}}, r"optimizer.n_candidates='many'.*expected an integer"),
    ({"optimizer_kwargs": {"seed": 3}}, r"optimizer.seed cannot be set here"),
    ({"trainer_kwargs": {"bogus": 1}}, r"Unknown trainer option 'bogus'"),
    ({"trainer_kwargs": {"max_epochs": 3}}, r"trainer.max_epochs cannot be set here.*max_epochs_per_trial"),
    ({"trainer_kwargs": {"log_every_n_steps": "often"}}, r"trainer.log_every_n_steps='often'.*integer"),
])
def test_unknown_or_mistyped_extra_options_are_refused_up_front(tmp_path, kwargs, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        _tuner(tmp_path, **kwargs)


# ------------------------------------------------------------------ SIGKILL, again and again
KILLABLE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from tests import tiny_task
    from fms_lightning.tuner import FMSTuner
    hub = tiny_task.make_hub(Path({hub!r}))
    FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
             budget_epochs={budget}, max_epochs_per_trial=3, method={method!r}, study_dir={study!r}, seed=0,
             optimizer_kwargs=tiny_task.FAST_OPT, progress=False).fit()
    print("finished", flush=True)
    """
)


def _count_rows(study_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{study_dir / 'study.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM observations").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dyhpo", "fms-gmn"])
def test_repeated_sigkills_lose_duplicate_and_change_nothing(tmp_path, method) -> None:
    """Kill the tuner 4 times while it trains; the rerun ends with the rows of an uninterrupted run."""
    budget, kills = 10, 4
    tiny_task.make_hub(tmp_path / "hub")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def code(study: str) -> str:
        return KILLABLE.format(repo=str(REPO), hub=str(tmp_path / "hub"), budget=budget, method=method,
                               study=str(tmp_path / study))

    reference = subprocess.run([sys.executable, "-c", code("reference")], env=env, capture_output=True, text=True,
                               timeout=600)
    assert "finished" in reference.stdout, reference.stderr[-2000:]
    rng = random.Random(13)
    seen: dict[tuple[int, int], tuple[float, str | None]] = {}
    killed = 0
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", code("study")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Kill once the run has committed something new, at a random moment of the next epoch.
        start_rows, deadline = _count_rows(tmp_path / "study"), time.time() + 300
        while _count_rows(tmp_path / "study") <= start_rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        rows = _rows(tmp_path / "study")
        assert all(rows[key] == value for key, value in seen.items()), "a committed observation was lost or changed"
        seen = rows
    assert killed >= 3
    print(f"{method}: {killed} SIGKILLs during the run", flush=True)
    done = subprocess.run([sys.executable, "-c", code("study")], env=env, capture_output=True, text=True, timeout=600)
    assert "finished" in done.stdout, done.stderr[-2000:]
    _check_study(tmp_path / "study", budget)
    final = _rows(tmp_path / "study")
    assert all(final[key] == value for key, value in seen.items())
    assert {k: v[0] for k, v in final.items()} == {k: v[0] for k, v in _rows(tmp_path / "reference").items()}
    assert not [p for p in (tmp_path / "study" / "checkpoints").rglob("*") if p.name.startswith(".")]
