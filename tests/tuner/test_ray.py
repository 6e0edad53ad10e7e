"""FMSTuner on a real local Ray runtime (``ray.init(num_cpus=2)``): parallel segments,
driver-only writes, fsspec storage, lost workers, a killed driver, and clear errors."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from fms_lightning.errors import ConfigurationError, MissingMetricError, StudyError
from fms_lightning.executors import LocalExecutor, RayExecutor
from fms_lightning.study import Study, TrialStatus
from fms_lightning.tuner import FMSTuner, _run_segment, sync
from fms_lightning.tuner.segment import SegmentSpec
from tests import tiny_task
from tests.conftest import warm_workers
from tests.tuner.test_core import _check_study

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]


class SlowEpochs(Callback):
    """Makes each training epoch last at least ``seconds`` (so that overlap is measurable)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        time.sleep(self.seconds)


class KillOnce(Callback):
    """SIGKILLs the process training the first epoch it sees, once per marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:  # created atomically: of two workers starting an epoch at once, only one is killed
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def _ray_tuner(tmp_path, budget=8, method="dyhpo", callbacks=(), executor="ray", **kw) -> FMSTuner:
    hub = tiny_task.make_hub(tmp_path / "hub")
    return FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                    budget_epochs=budget, max_epochs_per_trial=3, method=method, study_dir=tmp_path / "study", seed=0,
                    optimizer_kwargs=tiny_task.FAST_OPT, progress=False, executor=executor,
                    trainer_kwargs={"callbacks": list(callbacks)}, **kw)


def test_segments_run_in_parallel_on_workers_and_the_driver_writes_the_study(ray_local, tmp_path) -> None:
    warm_workers(ray_local)  # two live workers and free CPUs: earlier tests may have killed workers
    store = tmp_path / "bucket"
    tuner = _ray_tuner(tmp_path, budget=8, max_concurrent=2, storage=f"file://{store}", callbacks=[SlowEpochs(0.6)])
    result = tuner.fit()
    _check_study(tmp_path / "study", 8)  # exactly the budget: in-flight epochs count against it
    assert result.budget_used == 8
    workers = {s.worker for s in tuner.segments}
    assert len(workers) >= 2 and all(w.split(":")[1] != str(os.getpid()) for w in workers)
    spans = sorted((s.started, s.started + s.seconds) for s in tuner.segments)
    overlaps = sum(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert overlaps >= 2, spans
    # Checkpoints live in the study's own folder of the storage URL; the study folder holds only rows and
    # snapshot copies.
    with Study(tmp_path / "study", readonly=True) as study:
        own = store / study.get_meta("study_id")
        for t in study.trials():
            if t.status is not TrialStatus.FAILED:
                epoch, path = study.checkpoint(t.trial_id)
                assert epoch == study.last_epoch(t.trial_id) and (own / path).is_file()
                assert len(list((own / path).parent.glob("*.ckpt"))) == 1  # older ones were removed
    assert not (tmp_path / "study" / "checkpoints").exists()
    # No two in-flight segments trained the same trial.
    busy: dict[int, float] = {}
    for s in sorted(tuner.segments, key=lambda s: s.started):
        assert busy.get(s.spec.study_trial, 0.0) <= s.started + 1e-3
        busy[s.spec.study_trial] = s.started + s.seconds


def test_segments_on_workers_resume_exactly_like_one_local_run(ray_local, tmp_path) -> None:
    """Epochs 1, 2, 3 trained by separate Ray tasks give the weights of 3 epochs in this process."""
    config = {"model": "mlp16", "lr": 0.05, "batch_size": 16}
    finals = []
    for name, targets, ray in (("pieces", (1, 2, 3), True), ("straight", (3,), False)):
        tuner = _ray_tuner(tmp_path / name)
        executor = RayExecutor(_run_segment, tuner.runner, 1) if ray else LocalExecutor(tuner.runner)
        with Study(tmp_path / name / "study") as study:
            sid = study.add_trial(config, "mlp16", source="tuner")
            for target in targets:
                epoch, path = study.checkpoint(sid) or (0, None)
                executor.submit(SegmentSpec(sid, config, epoch, target, path))
                _, result = executor.next_done()
                assert result.error is None
                sync.commit_segment(tuner.storage, study, result, TrialStatus.PAUSED)
            assert [o.epoch for o in study.observations(sid)] == [1, 2, 3]
            finals.append(study.load_snapshot(study.observations(sid)[-1].snapshot))
        executor.close()
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-6, atol=1e-7, msg=k)


def test_a_killed_worker_is_rerun_from_its_checkpoint(ray_local, tmp_path) -> None:
    marker = tmp_path / "killed"
    tuner = _ray_tuner(tmp_path, budget=6, max_concurrent=2, callbacks=[KillOnce(str(marker))])
    result = tuner.fit()
    assert marker.exists(), "a worker should have been killed"
    _check_study(tmp_path / "study", 6)
    assert result.budget_used == 6
    with Study(tmp_path / "study", readonly=True) as study:
        assert not study.trials(TrialStatus.FAILED)  # the lost segment was re-run, not failed
    assert [reason.split(":")[0] for _, reason in tuner.lost_segments] == ["WorkerCrashedError"]
    killed_pid = marker.read_text()
    assert all(s.worker.split(":")[1] != killed_pid for s in tuner.segments)


KILLABLE_DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={{"env_vars": {{"PYTHONPATH": {repo!r}, "OMP_NUM_THREADS": "1"}}}})
    from tests import tiny_task
    from fms_lightning.tuner import FMSTuner
    hub = tiny_task.make_hub(__import__("pathlib").Path({hub!r}))
    FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
             budget_epochs={budget}, max_epochs_per_trial=3, method="dyhpo", study_dir={study!r}, seed=0,
             optimizer_kwargs=tiny_task.FAST_OPT, progress=False, executor="ray", max_concurrent=2).fit()
    print("finished", flush=True)
    """
)


def test_killing_the_driver_and_rerunning_resumes_the_study(tmp_path) -> None:
    budget = 8
    code = KILLABLE_DRIVER.format(repo=str(REPO), hub=str(tmp_path / "hub"), budget=budget,
                                  study=str(tmp_path / "study"))
    tiny_task.make_hub(tmp_path / "hub")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its own session, so the kill takes the driver and the local Ray it started down together.
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log, start_new_session=True)
    db = tmp_path / "study" / "study.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once some epochs are committed
        if db.exists():
            # (StudyError: the file exists but its tables are not written yet)
            with contextlib.suppress(sqlite3.OperationalError, StudyError), \
                    Study(tmp_path / "study", readonly=True) as study:
                if study.budget_used() >= 2:
                    break
        time.sleep(0.1)
    assert proc.poll() is None, "the driver ended before it was killed:\n" + (tmp_path / "driver.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    with Study(tmp_path / "study", readonly=True) as study:
        assert 0 < study.budget_used() < budget, "the driver should have been killed mid-study"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "finished" in done.stdout, done.stderr[-3000:]
    _check_study(tmp_path / "study", budget)


def test_errors_every_trial_would_hit_reach_the_driver(ray_local, tmp_path) -> None:
    tuner = _ray_tuner(tmp_path, max_concurrent=2)
    tuner.monitor = tuner.runner.monitor = "val_f1"
    with pytest.raises(MissingMetricError, match=r"val_f1.*val_acc"):
        tuner.fit()


def test_bad_executor_settings_are_explained(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigurationError, match="executor must be one of"):
        _ray_tuner(tmp_path, executor="dask")
    with pytest.raises(ConfigurationError, match="needs executor='ray'"):
        _ray_tuner(tmp_path, executor="local", max_concurrent=2)
    with pytest.raises(ConfigurationError, match="max_concurrent must be an integer >= 1"):
        _ray_tuner(tmp_path, max_concurrent=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'fms-lightning\[ray\]'"):
        _ray_tuner(tmp_path, max_concurrent=2).fit()


class HoldOnNode(Callback):
    """On the given Ray node, announces itself in ``marker`` and holds the segment open."""

    def __init__(self, node_id: str, marker: str) -> None:
        self.node_id, self.marker = node_id, marker

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import ray

        if ray.get_runtime_context().get_node_id() == self.node_id and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(60)  # the node is removed during this


LOST_NODE = textwrap.dedent(
    """
    import json, sys, threading, time, os
    sys.path.insert(0, {repo!r})
    import ray
    from ray.cluster_utils import Cluster
    from tests import tiny_task
    from tests.tuner.test_ray import HoldOnNode, SlowEpochs
    from fms_lightning.tuner import FMSTuner

    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
    node = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={{"env_vars": {{"PYTHONPATH": {repo!r}, "OMP_NUM_THREADS": "1"}}}})
    hub = tiny_task.make_hub(__import__("pathlib").Path({hub!r}))
    tuner = FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc",
                     mode="max", budget_epochs={budget}, max_epochs_per_trial=3, method="dyhpo",
                     study_dir={study!r}, seed=0, optimizer_kwargs=tiny_task.FAST_OPT, progress=False,
                     executor="ray", max_concurrent=2,
                     trainer_kwargs={{"callbacks": [HoldOnNode(node.node_id, {marker!r}), SlowEpochs(0.2)]}})

    def remove_node_mid_segment():
        while not os.path.exists({marker!r}):
            time.sleep(0.05)
        time.sleep(0.5)
        cluster.remove_node(node, allow_graceful=False)

    threading.Thread(target=remove_node_mid_segment, daemon=True).start()
    tuner.fit()
    print("REPORT", json.dumps({{"lost": [reason for _, reason in tuner.lost_segments]}}), flush=True)
    ray.shutdown()
    cluster.shutdown()
    """
)


def test_a_lost_node_has_its_segment_rerun_elsewhere(tmp_path) -> None:
    """A two-node Ray cluster loses a node mid-segment; the study still completes, exactly."""
    import json

    budget = 6
    tiny_task.make_hub(tmp_path / "hub")
    code = LOST_NODE.format(repo=str(REPO), hub=str(tmp_path / "hub"), budget=budget, study=str(tmp_path / "study"),
                            marker=str(tmp_path / "holding"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[7:])
    assert report["lost"] and all(r.startswith(("NodeDiedError", "WorkerCrashedError", "ObjectLostError"))
                                  for r in report["lost"]), report
    _check_study(tmp_path / "study", budget)
    with Study(tmp_path / "study", readonly=True) as study:
        assert not study.trials(TrialStatus.FAILED)
