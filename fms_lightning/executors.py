"""Executors run work in this process or as Ray tasks, a bounded number at a time.

Both take jobs with :meth:`submit` and hand back finished ones with
:meth:`next_done`, as ``(job, outcome)``; with a ``timeout`` it returns ``None``
when nothing finished in time. For the tuner a job is a
:class:`~fms_lightning.segment.SegmentSpec` and the outcome its
:class:`~fms_lightning.segment.SegmentResult`. On Ray the outcome can also be
:class:`LostWorker` (the process or node running it went away: the job can run
again) or :class:`RayFailure` (Ray gave up on it for another reason). An
exception raised by the job's own code is raised again, with its type.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fms_lightning.segment import SegmentResult, SegmentRunner, SegmentSpec

__all__ = ["LocalExecutor", "LostWorker", "RayExecutor", "RayFailure", "RefitPacer"]


@dataclass(frozen=True)
class LostWorker:
    """The worker or node running a job died; nothing of the job was committed."""

    reason: str


@dataclass(frozen=True)
class RayFailure:
    """Ray did not run a job to its end for another reason (e.g. out of memory, cancelled)."""

    reason: str
    error: BaseException


class LocalExecutor:
    """Runs one segment at a time, in this process, when :meth:`next_done` is called."""

    capacity = 1

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self._queue: deque[SegmentSpec] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> list[SegmentSpec]:
        """The jobs submitted and not yet handed back."""
        return list(self._queue)

    def submit(self, spec: SegmentSpec) -> None:
        self._queue.append(spec)

    def next_done(self, timeout: float | None = None) -> tuple[SegmentSpec, SegmentResult] | None:
        """Run the oldest queued segment; ``None`` with a ``timeout`` (nothing runs in the background)."""
        if timeout is not None or not self._queue:
            return None
        spec = self._queue.popleft()
        return spec, self.runner.run(spec)

    def close(self) -> None:
        self._queue.clear()


class RayExecutor:
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

    def __init__(self, fn: Callable[[Any, Any], Any], shared: Any, max_concurrent: int, *,
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

    def __len__(self) -> int:
        return len(self._inflight)

    @property
    def in_flight(self) -> list[Any]:
        """The jobs submitted and not yet handed back."""
        return list(self._inflight.values())

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


class RefitPacer:
    """When to stop gathering finished segments and suggest again (for parallel executors).

    A surrogate refit takes about as long as the recent suggestions did. A
    segment in flight that is expected to finish sooner than that is worth
    waiting for: one refit then covers its result too, instead of a refit now
    and another right after. Segments expected later are not waited for, so
    with epochs much longer than a refit the loop stays fully asynchronous.
    """

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._durations: list[float] = []

    def submitted(self, spec: SegmentSpec) -> None:
        self._started[spec.study_trial] = time.monotonic()

    def finished(self, spec: SegmentSpec, seconds: float | None) -> None:
        """``seconds``: how long the worker took (not when the driver noticed, which can be much later)."""
        self._started.pop(spec.study_trial, None)
        if seconds is not None:
            self._durations.append(seconds)

    def wait_seconds(self, suggest_seconds: list[float]) -> float:
        """How long to wait for the next finished segment before suggesting (0: only take finished ones)."""
        if not self._started or not self._durations or not suggest_seconds:
            return 0.0
        refit = statistics.median(suggest_seconds[-5:])
        typical = statistics.median(self._durations[-10:])
        now = time.monotonic()
        remaining = [max(0.0, start + typical - now) for start in self._started.values()]
        due = [r for r in remaining if r < refit]
        return min(refit, max(due) + 0.25 * typical) if due else 0.0
