"""Executors run trial segments for the tuner: in this process, or as Ray tasks.

Both take :class:`~fms_lightning.segment.SegmentSpec` s with :meth:`submit` and
hand back finished ones with :meth:`next_done`, as ``(spec, outcome)``; with a
``timeout`` it returns ``None`` when nothing finished in time. The
outcome is a :class:`~fms_lightning.segment.SegmentResult`, or :class:`LostWorker`
when the process running it went away (the segment can be run again from the
same committed checkpoint). Errors every trial would hit are raised.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fms_lightning.segment import SegmentResult, SegmentRunner, SegmentSpec

__all__ = ["LocalExecutor", "LostWorker", "RayExecutor", "RefitPacer"]


@dataclass(frozen=True)
class LostWorker:
    """The worker or node running a segment died; nothing of the segment was committed."""

    reason: str


Outcome = SegmentResult | LostWorker


class LocalExecutor:
    """Runs one segment at a time, in this process, when :meth:`next_done` is called."""

    capacity = 1

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self._queue: deque[SegmentSpec] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, spec: SegmentSpec) -> None:
        self._queue.append(spec)

    def next_done(self, timeout: float | None = None) -> tuple[SegmentSpec, Outcome] | None:
        """Run the oldest queued segment; ``None`` with a ``timeout`` (nothing runs in the background)."""
        if timeout is not None or not self._queue:
            return None
        spec = self._queue.popleft()
        return spec, self.runner.run(spec)

    def close(self) -> None:
        self._queue.clear()


def _run_on_worker(runner: SegmentRunner, spec: SegmentSpec) -> SegmentResult:
    return runner.run(spec)


class RayExecutor:
    """Runs up to ``max_concurrent`` segments at once as Ray tasks.

    Args:
        runner: Pickled to the object store once and shared by every task.
        max_concurrent: Segments in flight at once.
        address: Passed to ``ray.init`` when Ray is not yet initialised.
        resources: Ray resources per segment (default ``{"num_cpus": 1}``); each
            task uses as many torch threads as it has CPUs.

    Raises:
        ConfigurationError: If Ray is not installed.
    """

    def __init__(self, runner: SegmentRunner, max_concurrent: int, *, address: str | None = None,
                 resources: Mapping[str, Any] | None = None) -> None:
        from fms_lightning._ray import ensure_ray, require_ray

        self._ray = require_ray()
        self._started = ensure_ray(address)
        options = {"num_cpus": 1} | dict(resources or {})
        threads = max(1, int(options["num_cpus"])) if options.get("num_cpus") else None
        self.capacity = max_concurrent
        self._runner = self._ray.put(replace(runner, threads=threads))
        # No automatic retries: a lost worker is re-queued by the tuner, which knows the committed checkpoint.
        self._task = self._ray.remote(_run_on_worker).options(max_retries=0, **options)
        self._inflight: dict[Any, SegmentSpec] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def submit(self, spec: SegmentSpec) -> None:
        self._inflight[self._task.remote(self._runner, spec)] = spec

    def next_done(self, timeout: float | None = None) -> tuple[SegmentSpec, Outcome] | None:
        """A finished segment: wait for one (at most ``timeout`` seconds; ``None`` if none finished)."""
        from fms_lightning._ray import describe, is_lost_worker, raise_task_cause

        if not self._inflight:
            return None
        ready, _ = self._ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        spec = self._inflight.pop(ref)
        try:
            return spec, self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            raise_task_cause(err)  # the segment's own code raised: a fatal error (trial failures are returned)
        except self._ray.exceptions.RayError as err:
            if is_lost_worker(err):
                return spec, LostWorker(describe(err))
            raise
        raise AssertionError("unreachable")

    def close(self) -> None:
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
