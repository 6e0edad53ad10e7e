"""Generic executors: run ``fn(shared, job) -> result`` here, in local processes, or as Ray tasks.

Every executor takes jobs with :meth:`submit` and hands back finished ones with
:meth:`next_done`, as ``(job, outcome)``; with a ``timeout`` it returns ``None``
when nothing finished in time. The outcome is ``fn``'s result, or on Ray
:class:`LostWorker` (the process or node running the job went away: the job can
run again) or :class:`RayFailure` (Ray gave up on it for another reason). An
exception raised by ``fn`` itself is raised again, with its type.

:class:`LostWorkerRetries` is the one policy for lost workers: how often a job
runs again before it counts as failed. :func:`run_all` drives an executor over
a list of jobs with that policy.

Nothing here imports Lightning, torch or Ray; Ray is imported when a
:class:`RayExecutor` is built.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fms_lightning.errors import ConfigurationError

__all__ = [
    "Executor", "LocalExecutor", "LostWorker", "LostWorkerRetries", "ProcessExecutor", "RayExecutor", "RayFailure",
    "run_all",
]

JobFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class LostWorker:
    """The worker or node running a job died; nothing of the job was committed."""

    reason: str


@dataclass(frozen=True)
class RayFailure:
    """Ray did not run a job to its end for another reason (e.g. out of memory, cancelled)."""

    reason: str
    error: BaseException


class Executor(Protocol):
    """What the drivers need of an executor."""

    capacity: int

    def __len__(self) -> int: ...
    def submit(self, job: Any) -> None: ...
    def next_done(self, timeout: float | None = None) -> tuple[Any, Any] | None: ...
    def close(self) -> None: ...


@dataclass
class LostWorkerRetries:
    """How often a job whose worker was lost runs again before it counts as failed.

    Args:
        max_retries: Re-runs allowed per job (0: a lost worker fails the job at once).

    Raises:
        ConfigurationError: If ``max_retries`` is not an integer >= 0.

    >>> policy = LostWorkerRetries(1)
    >>> policy.retry("trial-3"), policy.retry("trial-3"), policy.times_lost("trial-3")
    (True, False, 2)
    """

    max_retries: int
    _lost: Counter[Hashable] = field(default_factory=Counter, init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.max_retries
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigurationError(f"max_lost_worker_retries must be an integer >= 0, got {n!r}.")

    def retry(self, key: Hashable) -> bool:
        """Count one lost worker for the job ``key``; whether the job should run again."""
        self._lost[key] += 1
        return self._lost[key] <= self.max_retries

    def times_lost(self, key: Hashable) -> int:
        """How many times the job ``key``'s worker was lost so far."""
        return self._lost[key]


class LocalExecutor:
    """Runs one job at a time, in this process, when :meth:`next_done` is called."""

    capacity = 1

    def __init__(self, fn: JobFn, shared: Any) -> None:
        self._fn, self._shared = fn, shared
        self._queue: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> list[Any]:
        """The jobs submitted and not yet handed back."""
        return list(self._queue)

    def submit(self, job: Any) -> None:
        self._queue.append(job)

    def next_done(self, timeout: float | None = None) -> tuple[Any, Any] | None:
        """Run the oldest queued job; ``None`` with a ``timeout`` (nothing runs in the background)."""
        if timeout is not None or not self._queue:
            return None
        job = self._queue.popleft()
        return job, self._fn(self._shared, job)

    def close(self) -> None:
        self._queue.clear()


class _Handles:
    """An executor that keeps its jobs in flight by a handle (a future, a Ray object ref)."""

    _inflight: dict[Any, Any]

    def __len__(self) -> int:
        return len(self._inflight)

    @property
    def in_flight(self) -> list[Any]:
        """The jobs submitted and not yet handed back."""
        return list(self._inflight.values())


class ProcessExecutor(_Handles):
    """Runs ``fn(shared, job)`` in up to ``max_workers`` local processes.

    ``fn``, ``shared`` and the jobs are pickled to the processes.

    Args:
        fn: A module-level function.
        shared: Sent with every job.
        max_workers: Processes (and jobs in flight) at once.
        mp_context: The ``multiprocessing`` context (default: the platform's).
    """

    def __init__(self, fn: JobFn, shared: Any, max_workers: int, *,
                 mp_context: multiprocessing.context.BaseContext | None = None) -> None:
        self._fn, self._shared = fn, shared
        self.capacity = max_workers
        self._pool = cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=mp_context)
        self._inflight: dict[cf.Future[Any], Any] = {}

    def submit(self, job: Any) -> None:
        self._inflight[self._pool.submit(self._fn, self._shared, job)] = job

    def next_done(self, timeout: float | None = None) -> tuple[Any, Any] | None:
        """A finished job: wait for one (at most ``timeout`` seconds; ``None`` if none finished)."""
        if not self._inflight:
            return None
        done, _ = cf.wait(list(self._inflight), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        if not done:
            return None
        future = min(done, key=list(self._inflight).index)  # the oldest of those done
        return self._inflight.pop(future), future.result()

    def close(self) -> None:
        """Cancel the jobs not started yet and wait for the processes to end."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()


class RayExecutor(_Handles):
    """Runs ``fn(shared, job)`` as Ray tasks, up to ``max_concurrent`` at once.

    Args:
        fn: A module-level function (Ray ships it to the workers).
        shared: Put in the object store once and passed to every task.
        max_concurrent: Jobs in flight at once.
        address: Passed to ``ray.init`` when Ray is not yet initialised; a runtime
            this executor starts is shut down by :meth:`close`.
        resources: Ray resources per task (default ``{"num_cpus": 1}``).

    Raises:
        ConfigurationError: If Ray is not installed.
    """

    def __init__(self, fn: JobFn, shared: Any, max_concurrent: int, *,
                 address: str | None = None, resources: Mapping[str, Any] | None = None) -> None:
        from fms_lightning._ray import ensure_ray, require_ray

        self._ray = require_ray()
        self._started = ensure_ray(address)
        self.capacity = max_concurrent
        try:
            self._shared = self._ray.put(shared)
        except BaseException:
            if self._started:
                self._ray.shutdown()
            raise
        # No automatic retries: the caller decides what a lost worker means (it knows what was committed).
        self._task = self._ray.remote(fn).options(max_retries=0, **({"num_cpus": 1} | dict(resources or {})))
        self._inflight: dict[Any, Any] = {}

    def submit(self, job: Any) -> None:
        self._inflight[self._task.remote(self._shared, job)] = job

    def next_done(self, timeout: float | None = None) -> tuple[Any, Any] | None:
        """A finished job: wait for one (at most ``timeout`` seconds; ``None`` if none finished)."""
        from fms_lightning._ray import describe, is_lost_worker, raise_task_cause

        if not self._inflight:
            return None
        ready, _ = self._ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        job = self._inflight.pop(ref)
        try:
            return job, self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            raise_task_cause(err)  # the job's own code raised
        except self._ray.exceptions.RayError as err:
            if is_lost_worker(err):
                return job, LostWorker(describe(err))
            return job, RayFailure(describe(err), err)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Cancel what still runs; shut Ray down if this executor started it."""
        from fms_lightning._ray import cancel_all

        cancel_all(self._inflight)
        self._inflight.clear()
        if self._started:
            self._ray.shutdown()


def run_all(executor: Executor, jobs: Sequence[Any], retries: LostWorkerRetries) -> list[Any]:
    """Run every job, ``executor.capacity`` at a time, and close the executor.

    A job whose worker was lost runs again (before the jobs not started yet) while
    ``retries`` allows it. After an error, :meth:`Executor.close` leaves nothing running.

    Each job is handed to ``fn`` as it is; the executors hand back the object
    submitted, which is how outcomes are matched to jobs.

    Returns:
        One outcome per job, in ``jobs``' order: ``fn``'s result, or the last
        :class:`LostWorker` (retries used up) or :class:`RayFailure`.
    """
    try:
        queue = list(reversed(range(len(jobs))))  # popped from the end: jobs' order
        running: dict[int, deque[int]] = {}  # id(job) -> the indices of its runs in flight
        done: dict[int, Any] = {}
        while queue or len(executor):
            while queue and len(executor) < executor.capacity:
                index = queue.pop()
                running.setdefault(id(jobs[index]), deque()).append(index)
                executor.submit(jobs[index])
            finished = executor.next_done()
            assert finished is not None  # without a timeout, next_done waits while jobs are in flight
            job, outcome = finished
            index = running[id(job)].popleft()
            if isinstance(outcome, LostWorker) and retries.retry(index):
                queue.append(index)  # run next, before later jobs
            else:
                done[index] = outcome
        return [done[i] for i in range(len(jobs))]
    finally:
        executor.close()
