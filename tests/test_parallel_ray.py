"""fms_lightning._parallel's RayExecutor on a real local Ray runtime (``ray.init(num_cpus=2)``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fms_lightning._parallel import LostWorker, LostWorkerRetries, RayExecutor, run_all

pytest.importorskip("ray")


def _scale(shared: int, job: int) -> int:
    if job < 0:
        raise ValueError(f"negative job {job}")
    return shared * job


def _die_once(folder: str, job: int) -> int:
    """Kills its own worker the first time job 2 runs (a marker file remembers it)."""
    marker = Path(folder) / f"killed-{job}"
    if job == 2 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return job * 10


def test_ray_executor_runs_fn_on_workers_and_keeps_error_types(ray_local) -> None:
    assert run_all(RayExecutor(_scale, 3, 2), [1, 2, 3], LostWorkerRetries(0)) == [3, 6, 9]
    with pytest.raises(ValueError, match="negative job -1"):  # the job's own error, not a Ray wrapper
        run_all(RayExecutor(_scale, 3, 2), [1, -1], LostWorkerRetries(0))
    executor = RayExecutor(_scale, 1, 1)
    assert executor.next_done(timeout=0.01) is None
    executor.close()


def test_a_killed_worker_is_a_lost_worker_and_runs_again(ray_local, tmp_path) -> None:
    retries = LostWorkerRetries(1)
    assert run_all(RayExecutor(_die_once, str(tmp_path), 2), [1, 2, 3], retries) == [10, 20, 30]
    assert retries.times_lost(1) == 1
    (tmp_path / "killed-2").unlink()
    outcomes = run_all(RayExecutor(_die_once, str(tmp_path), 1), [2], LostWorkerRetries(0))
    assert isinstance(outcomes[0], LostWorker) and outcomes[0].reason
