"""Executors run work in this process or as Ray tasks, a bounded number at a time.

Both take jobs with :meth:`submit` and hand back finished ones with
:meth:`next_done`, as ``(job, outcome)``; with a ``timeout`` it returns ``None``
when nothing finished in time. For the tuner a job is a
:class:`~fms_lightning.tuner.segment.SegmentSpec` and the outcome its
:class:`~fms_lightning.tuner.segment.SegmentResult`. On Ray the outcome can also be
:class:`LostWorker` (the process or node running it went away: the job can run
again) or :class:`RayFailure` (Ray gave up on it for another reason). An
exception raised by the job's own code is raised again, with its type.

The executors themselves are the generic ones of :mod:`fms_lightning._parallel`;
this module binds the local one to a :class:`~fms_lightning.tuner.segment.SegmentRunner`
and paces the tuner's refits.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from fms_lightning import _parallel
from fms_lightning._parallel import LostWorker, RayExecutor, RayFailure

if TYPE_CHECKING:
    from fms_lightning.tuner.segment import SegmentResult, SegmentRunner, SegmentSpec

__all__ = ["LocalExecutor", "LostWorker", "RayExecutor", "RayFailure", "RefitPacer"]


def _run(runner: SegmentRunner, spec: SegmentSpec) -> SegmentResult:
    return runner.run(spec)


class LocalExecutor(_parallel.LocalExecutor):
    """Runs one segment at a time, in this process, when :meth:`next_done` is called."""

    def __init__(self, runner: SegmentRunner) -> None:
        super().__init__(_run, runner)
        self.runner = runner


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
        self._started[spec.trial_id] = time.monotonic()

    def finished(self, spec: SegmentSpec, seconds: float | None) -> None:
        """``seconds``: how long the worker took (not when the driver noticed, which can be much later)."""
        self._started.pop(spec.trial_id, None)
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
