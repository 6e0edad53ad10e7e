"""List sweeps on Ray: one Ray task per preset, ``parallel`` at once, lost workers re-run.

The helpers below are module-level so that Ray workers import them by
reference (the ``ray_local`` fixture puts the repository on their path).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from fms_lightning.cli import main
from fms_lightning.errors import ConfigurationError, MissingMetricError
from fms_lightning.optim import NADAMW_LIST
from fms_lightning.optim import sweep as sweep_module
from fms_lightning.optim.sweep import SweepResult, sweep
from tests.optim.test_sweep import SMALL, _dm

EPOCHS = 2


class Intervals(Callback):
    """Writes each fit's ``[pid, start, end]`` (wall clock) to ``folder``.

    A fit's start waits (up to ``timeout`` seconds) until ``meet`` fits have
    started, so trials that really run at the same time always overlap, while
    trials run one after another never do (the first one times out alone).
    """

    def __init__(self, folder: Path, meet: int = 1, timeout: float = 30.0) -> None:
        self.folder, self.meet, self.timeout = Path(folder), meet, timeout
        self.start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.time()
        (self.folder / f"start-{os.getpid()}-{time.time_ns()}").touch()
        deadline = time.monotonic() + self.timeout
        while len(list(self.folder.glob("start-*"))) < self.meet and time.monotonic() < deadline:
            time.sleep(0.02)

    def on_fit_end(self, trainer, pl_module) -> None:
        record = [os.getpid(), self.start, time.time()]
        (self.folder / f"run-{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(record))


class Kill(Callback):
    """SIGKILLs its own worker in the first training epoch, the first ``times`` times (marker files in ``folder``)."""

    def __init__(self, folder: Path, times: int = 1) -> None:
        self.folder, self.times = Path(folder), times

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        for i in range(self.times):
            try:
                fd = os.open(self.folder / f"kill-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


def _runs(folder: Path) -> list[tuple[int, float, float]]:
    return [tuple(json.loads(p.read_text())) for p in sorted(folder.glob("run-*.json"))]  # type: ignore[misc]


@pytest.fixture(scope="module")
def local_and_ray(ray_local, tmp_path_factory) -> tuple[SweepResult, SweepResult, Path]:
    """The same top-3 sweep run locally (one after another) and on Ray with ``parallel=2``."""
    folder = tmp_path_factory.mktemp("intervals")
    local = sweep(SMALL, _dm(), top=3, max_epochs=EPOCHS)
    on_ray = sweep(SMALL, _dm(), top=3, max_epochs=EPOCHS, parallel=2, executor="ray",
                   trainer_kwargs={"callbacks": [Intervals(folder, meet=2)]})
    return local, on_ray, folder


def test_ray_sweep_matches_the_local_sweep(local_and_ray) -> None:
    local, on_ray, _ = local_and_ray
    assert [t.rank for t in on_ray.trials] == [1, 2, 3]
    assert [t.point for t in on_ray.trials] == list(NADAMW_LIST[:3])
    # Every trial is seeded: the same preset gives the same curve in a Ray worker.
    for a, b in zip(local.trials, on_ray.trials):
        assert b.error is None and len(b.values) == EPOCHS
        assert b.values == pytest.approx(a.values, abs=1e-6)
        assert b.best_epoch == a.best_epoch
    assert on_ray.best.rank == local.best.rank
    # The presets do differ, so equal curves are not a coincidence of identical runs.
    assert len({t.values for t in on_ray.trials}) > 1


def test_ray_sweep_runs_trials_in_parallel_and_keeps_ray_running(local_and_ray, ray_local) -> None:
    _, _, folder = local_and_ray
    runs = _runs(folder)
    assert len(runs) == 3
    pids = {pid for pid, _, _ in runs}
    assert len(pids) == 2 and os.getpid() not in pids  # two Ray workers, not this process
    overlapping = [
        (a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert overlapping, runs
    # The sweep used the runtime it found and left it running.
    assert ray_local.is_initialized()


def test_a_lost_worker_is_rerun(ray_local, local_and_ray, tmp_path) -> None:
    local, _, _ = local_and_ray
    result = sweep(SMALL, _dm(), top=2, max_epochs=EPOCHS, parallel=2, executor="ray",
                   trainer_kwargs={"callbacks": [Kill(tmp_path, times=1), Intervals(tmp_path)]})
    killed = int((tmp_path / "kill-0").read_text())
    runs = _runs(tmp_path)
    assert len(runs) == 2 and killed not in {pid for pid, _, _ in runs}  # the killed trial finished elsewhere
    for a, b in zip(local.trials, result.trials):
        assert b.error is None and b.values == pytest.approx(a.values, abs=1e-6)


def test_a_worker_lost_every_time_fails_the_trial(ray_local, tmp_path) -> None:
    result = sweep(SMALL, _dm(), top=1, max_epochs=1, executor="ray", max_lost_worker_retries=1,
                   trainer_kwargs={"callbacks": [Kill(tmp_path, times=10)]})
    (trial,) = result.trials
    assert trial.best_value is None and trial.values == ()
    assert "lost 2 times" in trial.error and "WorkerCrashedError" in trial.error
    assert sorted(p.name for p in tmp_path.glob("kill-*")) == ["kill-0", "kill-1"]
    assert "failed" in result.format_table()


def test_ray_started_by_the_sweep_is_shut_down(ray_local, monkeypatch) -> None:
    addresses: list[str | None] = []
    shutdowns: list[bool] = []
    # Pretend Ray was not running: the sweep "starts" it at the address given, then must stop it.
    import fms_lightning._ray as ray_helpers

    monkeypatch.setattr(ray_helpers, "ensure_ray", lambda address=None: addresses.append(address) or True)
    monkeypatch.setattr(ray_local, "shutdown", lambda: shutdowns.append(True))
    result = sweep(SMALL, _dm(), top=1, max_epochs=1, executor="ray", ray_address="auto",
                   trainer_kwargs={"limit_train_batches": 2})
    assert result.trials[0].error is None
    assert addresses == ["auto"] and shutdowns == [True]


def test_library_errors_in_a_ray_task_keep_their_type(ray_local) -> None:
    with pytest.raises(MissingMetricError, match="monitors 'val_f1'.*'val_acc'") as info:
        sweep(SMALL, _dm(), top=2, max_epochs=1, parallel=2, monitor="val_f1", executor="ray",
              trainer_kwargs={"limit_train_batches": 2})
    assert type(info.value) is MissingMetricError  # the original class, not a RayTaskError wrapper
    # Ray pickles with cloudpickle, so a lambda factory reaches the worker, and its error comes back.
    with pytest.raises(ConfigurationError, match="must return a NAdamWListModule"):
        sweep(lambda p: object(), _dm(), top=1, max_epochs=1, executor="ray")  # type: ignore[arg-type, return-value]


def test_unpicklable_arguments_with_ray() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigurationError, match="executor='ray'.*must be picklable"):
        sweep(SMALL, _dm(), top=1, max_epochs=1, executor="ray", trainer_kwargs={"plugins": [threading.Lock()]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"executor": "dask"}, r"executor must be one of \['local', 'ray'\], got 'dask'"),
        ({"executor": None}, "executor must be one of"),
        ({"executor": "ray", "parallel": 0}, "parallel must be an integer >= 1, got 0"),
        ({"ray_address": "auto"}, "ray_address='auto' is only used with executor='ray'"),
        ({"executor": "ray", "max_lost_worker_retries": -1}, "max_lost_worker_retries must be an integer >= 0"),
    ],
)
def test_bad_executor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        sweep(SMALL, _dm(), top=1, max_epochs=1, **kwargs)


CLI_ARGS = ["sweep", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "model.channels=[4,8]",
            "model.hidden=16", "data.batch_size=128", "--top", "2"]


def test_cli_runs_the_sweep_on_ray(ray_local, monkeypatch, capsys) -> None:
    calls: list[dict] = []
    real = sweep_module.sweep

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "sweep", spy)
    assert main([*CLI_ARGS, "--executor", "ray"]) == 0
    (kwargs,) = calls
    assert kwargs["executor"] == "ray" and kwargs["ray_address"] is None and kwargs["parallel"] == 2
    out = capsys.readouterr().out
    assert "Sweeping the first 2 presets (2 at a time on Ray)" in out and "best: rank" in out


def test_cli_executor_options(capsys) -> None:
    from fms_lightning.cli import _parser

    args = _parser().parse_args(["sweep", "--top", "3", "--executor", "ray", "--ray-address", "ray://head:10001"])
    assert (args.executor, args.ray_address, args.top) == ("ray", "ray://head:10001", 3)
    defaults = _parser().parse_args(["sweep"])
    assert (defaults.executor, defaults.ray_address) == ("local", None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["sweep", "--executor", "dask"])
    assert main([*CLI_ARGS, "--ray-address", "auto"]) == 2  # a Ray address without the Ray executor
    assert "only used with executor='ray'" in capsys.readouterr().err
