"""One :meth:`FMSTuner.fit` call: the executor loop, with pacing, lost-worker retries, failures and TensorBoard.

Each step asks the optimizer for a suggestion (durable in the study before it is
trained), hands it to the executor, and takes in every segment that has finished,
or will before a surrogate refit could be done, before suggesting again: one fit
then serves all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fms_lightning.errors import TrialFailedError
from fms_lightning._parallel import LostWorkerRetries
from fms_lightning.executors import LocalExecutor, LostWorker, RayExecutor, RayFailure, RefitPacer
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.study import Study
from fms_lightning.trial import Suggestion, TrialStatus
from fms_lightning.tuner import sync
from fms_lightning.tuner._ahead import FitAhead
from fms_lightning.tuner.segment import SegmentResult, SegmentSpec

if TYPE_CHECKING:
    from fms_lightning.tuner.core import FMSTuner

__all__ = ["TrainingLoop", "make_executor", "rerun_or_fail", "summary_writer"]

log = logging.getLogger(__name__)


class _NullWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def summary_writer(path: Path) -> Any:
    """A TensorBoard writer for the tuner's own curves (a no-op if tensorboard is unavailable)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return _NullWriter()

    return SummaryWriter(str(path))


def make_executor(tuner: FMSTuner, task: Callable[..., SegmentResult]) -> LocalExecutor | RayExecutor:
    """The tuner's executor: this process, or Ray tasks running ``task(runner, spec)``."""
    if tuner.executor == "ray":
        cpus = tuner.resources_per_trial.get("num_cpus", 1)  # each task uses as many torch threads
        runner = replace(tuner.runner, threads=max(1, int(cpus)) if cpus else None)
        return RayExecutor(task, runner, tuner.max_concurrent, address=tuner.ray_address,
                           resources=tuner.resources_per_trial)
    return LocalExecutor(tuner.runner)


def rerun_or_fail(spec: SegmentSpec, lost: LostWorker, retries: LostWorkerRetries) -> SegmentResult | None:
    """``None`` if a segment whose worker was lost should run again (the ``retries`` policy), else its failure."""
    if retries.retry(spec.trial_id):
        log.warning("Trial %s: %s; re-running it from epoch %s.", spec.trial_id, lost.reason, spec.start_epoch)
        return None
    reason = f"LostWorker: its worker was lost {retries.times_lost(spec.trial_id)} times; last: {lost.reason}"
    return SegmentResult(spec, (), None, None, reason, "", time.time())


class TrainingLoop:
    """Train until the budget is spent; the tuner's ``segments``, ``suggest_seconds`` and ``lost_segments`` fill up.

    Args:
        tuner: The tuner (its settings, runner and storage).
        opt: Its optimizer, up to date with the study.
        study: The open study.
        unfinished: Suggestions handed out before and never finished; trained first.
    """

    def __init__(self, tuner: FMSTuner, opt: FMSOptimizer, study: Study, unfinished: list[Suggestion]) -> None:
        self.tuner, self.opt, self.study, self.unfinished = tuner, opt, study, unfinished
        self.failures: list[str] = []
        self.retries = LostWorkerRetries(tuner.max_lost_worker_retries)
        self._first_failure: tuple[int, Path | None, str | None] = (0, None, None)
        self._unsaved_fit = False

    def run(self, executor: LocalExecutor | RayExecutor, bar: Any, writer: Any) -> None:
        tuner, opt, study = self.tuner, self.opt, self.study
        used = study.budget_used(source=sync.TUNER)
        pace = RefitPacer()
        while True:
            while len(executor) < executor.capacity and used + _epochs(executor.in_flight) < tuner.budget_epochs:
                spec = self._next_spec(writer, used)
                executor.submit(spec)
                pace.submitted(spec)
            if not len(executor):
                return
            done = self._train_fitting_ahead(executor) if tuner.fit_while_training else executor.next_done()
            while done is not None:
                spec, outcome = done
                pace.finished(spec, outcome.seconds if isinstance(outcome, SegmentResult) else None)
                if isinstance(outcome, RayFailure):
                    raise outcome.error
                if isinstance(outcome, LostWorker):
                    tuner.lost_segments.append((spec, outcome.reason))
                    outcome = rerun_or_fail(spec, outcome, self.retries)
                if outcome is None:  # re-run from the same committed checkpoint
                    executor.submit(spec)
                    pace.submitted(spec)
                else:
                    self._finish(outcome)
                done = executor.next_done(timeout=pace.wait_seconds(tuner.suggest_seconds))
            used = study.budget_used(source=sync.TUNER)
            best = opt.best()
            bar.update_to(used, None if best is None else best.value,
                          running=len(executor) if executor.capacity > 1 else None)
            if best is not None:
                writer.add_scalar("tuner/incumbent", best.value, used)
            fit_loss = getattr(opt.surrogate, "last_fit_loss", None)
            if fit_loss is not None:
                writer.add_scalar("tuner/surrogate_fit_loss", fit_loss, used)

    def _train_fitting_ahead(self, executor: LocalExecutor | RayExecutor) -> tuple[Any, Any] | None:
        """Train the local executor's segment while a forked child fits the surrogate ahead; adopt that fit.

        The fit is installed before the segment is told to the optimizer, so the next
        ``suggest()`` only conditions on the segment's epochs (see ``FMSOptimizer.fit_ahead``).
        """
        if not isinstance(executor, LocalExecutor) or not self.opt._fits_ahead():
            return executor.next_done()
        ahead = FitAhead(self.opt)
        if not ahead.start():
            return executor.next_done()
        try:
            done = executor.next_done()
        except BaseException:
            ahead.cancel()
            raise
        t0 = time.perf_counter()
        fit = ahead.finish()
        self._unsaved_fit = fit is not None  # saved with the segment: the rows cannot give this fit back
        self.tuner.fit_ahead_seconds.append((fit, time.perf_counter() - t0))
        return done

    def _next_spec(self, writer: Any, used: int) -> SegmentSpec:
        """The next suggestion as a segment, durable in the study before it is trained."""
        t0 = time.perf_counter()
        s = self.unfinished.pop(0) if self.unfinished else self.opt.suggest(new_trial_id=self.study.next_trial_id())
        self.tuner.suggest_seconds.append(time.perf_counter() - t0)
        writer.add_scalar("tuner/suggest_seconds", self.tuner.suggest_seconds[-1], used)
        entry = self.tuner.runner.entry(s.config)
        return sync.start_segment(self.opt, self.study, s, entry.name if entry else None)

    def _finish(self, result: SegmentResult) -> None:
        """Commit a finished segment, tell the optimizer, and track consecutive failures."""
        spec, tuner = result.spec, self.tuner
        tuner.segments.append(result)
        if result.error is None:
            done = spec.target >= tuner.max_epochs_per_trial
            sync.commit_segment(tuner.storage, self.study, result, TrialStatus.COMPLETED if done else TrialStatus.PAUSED,
                                opt=self._take_unsaved_fit())
            sync.tell(self.opt, self.study, result)
            self.failures.clear()
            return
        trace = self._save_traceback(result)
        log.warning("Trial %s failed: %s%s", spec.trial_id, result.error,
                    f" (traceback: {trace})" if trace is not None else "")
        sync.commit_segment(tuner.storage, self.study, result, TrialStatus.FAILED, opt=self._take_unsaved_fit())
        sync.tell(self.opt, self.study, result)
        self.failures.append(f"trial {spec.trial_id}: {result.error}")
        if len(self.failures) == 1:
            self._first_failure = (spec.trial_id, trace, result.traceback)
        if len(self.failures) >= tuner.max_consecutive_failures:
            first, path, text = self._first_failure
            shown = ""
            if text:
                lines = text.rstrip().splitlines()
                cut = ["  ..."] if len(lines) > 40 else []
                shown = f"\nTraceback of trial {first}, the first of them" + (f" (in full in {path})" if path else "") \
                    + ":\n" + "\n".join(cut + lines[-40:])
            raise TrialFailedError(
                f"{len(self.failures)} trials in a row failed; stopping. Reasons:\n  " + "\n  ".join(self.failures)
                + shown
            )

    def _take_unsaved_fit(self) -> FMSOptimizer | None:
        """The optimizer if a fit made while the segment trained was installed since the last save (then saved)."""
        unsaved, self._unsaved_fit = self._unsaved_fit, False
        return self.opt if unsaved else None

    def _save_traceback(self, result: SegmentResult) -> Path | None:
        """Write a failed segment's traceback to ``STUDY_DIR/failures/trial_NNNNN.txt``; its path."""
        if not result.traceback:
            return None
        spec = result.spec
        path = self.tuner.study_dir / "failures" / f"trial_{spec.trial_id:05d}.txt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"Trial {spec.trial_id}, config {spec.config}, epochs {spec.start_epoch}->{spec.target}, "
                            f"on {result.worker}\n\n{result.traceback}")
        except OSError:
            return None
        return path


def _epochs(specs: list[SegmentSpec]) -> int:
    """Epochs the segments train (those in flight count against the budget)."""
    return sum(s.target - s.start_epoch for s in specs)
