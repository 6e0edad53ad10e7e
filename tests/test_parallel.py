"""The generic executors of fms_lightning._parallel: local, processes, the lost-worker retry policy."""

from __future__ import annotations

import os

import pytest

from fms_lightning._parallel import (
    LocalExecutor, LostWorker, LostWorkerRetries, ProcessExecutor, RayFailure, run_all,
)
from fms_lightning.errors import ConfigurationError


def _scale(shared: int, job: int) -> tuple[int, int]:
    """A job: ``shared * job``, and the process that ran it."""
    return shared * job, os.getpid()


def _fail_on_three(shared: int, job: int) -> int:
    if job == 3:
        raise KeyError(f"job {job}")
    return shared * job


class FlakyExecutor(LocalExecutor):
    """A local executor whose worker is 'lost' the first ``losses[job]`` times a job runs."""

    def __init__(self, fn, shared, losses: dict[int, int], capacity: int = 1) -> None:
        super().__init__(fn, shared)
        self.losses, self.capacity, self.runs, self.closed = dict(losses), capacity, [], False

    def next_done(self, timeout=None):
        job = self.in_flight[0]
        self.runs.append(job)
        if self.losses.get(job, 0) > 0:
            self.losses[job] -= 1
            self._queue.popleft()
            return job, LostWorker(f"worker of job {job} died")
        return super().next_done(timeout)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_local_executor_runs_in_order_in_this_process() -> None:
    executor = LocalExecutor(_scale, 10)
    for job in (1, 2, 3):
        executor.submit(job)
    assert len(executor) == 3 and executor.in_flight == [1, 2, 3]
    assert executor.next_done(timeout=0.1) is None  # nothing runs in the background
    assert executor.next_done() == (1, (10, os.getpid()))
    executor.close()
    assert len(executor) == 0 and executor.next_done() is None


def test_run_all_keeps_the_jobs_order_and_raises_the_jobs_own_errors() -> None:
    assert [r for r, _ in run_all(LocalExecutor(_scale, 2), [3, 1, 2], LostWorkerRetries(0))] == [6, 2, 4]
    with pytest.raises(KeyError, match="job 3"):
        run_all(LocalExecutor(_fail_on_three, 1), [1, 3], LostWorkerRetries(0))


def test_a_lost_worker_reruns_the_job_first_until_the_retries_are_used_up() -> None:
    retries = LostWorkerRetries(2)
    executor = FlakyExecutor(_fail_on_three, 5, losses={1: 2, 2: 3})
    outcomes = run_all(executor, [1, 2, 4], retries)
    assert outcomes[0] == 5 and outcomes[2] == 20
    assert outcomes[1] == LostWorker("worker of job 2 died")  # lost 3 times: 2 retries were not enough
    assert executor.runs == [1, 1, 1, 2, 2, 2, 4]  # a lost job runs again before the later ones
    assert (retries.times_lost(0), retries.times_lost(1), retries.times_lost(2)) == (2, 3, 0)
    assert executor.closed


def test_equal_jobs_each_get_their_outcome() -> None:
    job = 7
    assert run_all(LocalExecutor(_fail_on_three, 1), [job, job, 2], LostWorkerRetries(0)) == [7, 7, 2]


def test_the_retry_policy_counts_per_job() -> None:
    policy = LostWorkerRetries(1)
    assert policy.retry("a") and policy.retry("b")
    assert not policy.retry("a") and policy.times_lost("a") == 2 and policy.times_lost("c") == 0
    assert not LostWorkerRetries(0).retry("a")


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_the_retry_policy_refuses_bad_counts(bad) -> None:
    with pytest.raises(ConfigurationError, match=r"max_lost_worker_retries must be an integer >= 0, got"):
        LostWorkerRetries(bad)


def test_process_executor_runs_jobs_in_other_processes_at_once() -> None:
    executor = ProcessExecutor(_scale, 3, 2)
    outcomes = run_all(executor, [1, 2, 3, 4], LostWorkerRetries(0))
    assert [r for r, _ in outcomes] == [3, 6, 9, 12]
    assert os.getpid() not in {pid for _, pid in outcomes}
    with pytest.raises(KeyError, match="job 3"):
        run_all(ProcessExecutor(_fail_on_three, 1, 2), [1, 3, 2], LostWorkerRetries(0))


def test_process_executor_times_out_and_closes() -> None:
    executor = ProcessExecutor(_scale, 1, 1)
    assert executor.next_done(timeout=0.01) is None  # nothing in flight
    executor.submit(5)
    assert executor.in_flight == [5]
    job, (value, _) = executor.next_done()
    assert (job, value) == (5, 5)
    executor.close()


def test_outcomes_name_what_went_wrong() -> None:
    err = RuntimeError("out of memory")
    assert RayFailure("OutOfMemoryError: killed", err).error is err
    assert LostWorker("NodeDiedError: gone").reason.startswith("NodeDiedError")
