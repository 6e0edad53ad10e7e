"""List sweeps: train the first K presets of a hyperparameter list and keep the best.

This is the NAdamW-lists paper's turn-key protocol: with a budget of K parallel
trials, run the first K points of the list (5 in the paper) and keep the one
with the best validation metric. Trials are independent Lightning runs of a
:class:`~fms_lightning.optim.NAdamWListModule`. With the default ``executor="local"``
and ``parallel > 1`` they run in separate local processes (``forkserver``, else
``spawn``), otherwise one after another in this process. With ``executor="ray"``
each trial is a Ray task (one CPU), ``parallel`` at a time, on the Ray runtime
this process is connected to (a local one is started, and stopped afterwards,
if there is none); a trial whose worker or node is lost is run again.

The trials run on the generic executors of :mod:`fms_lightning._parallel`. The
recipe runner and the ``sweep`` sub-command are in :mod:`fms_lightning.optim.sweep_cli`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from fms_lightning._parallel import (
    Executor, LocalExecutor, LostWorker, LostWorkerRetries, ProcessExecutor, RayExecutor, RayFailure, run_all,
)
from fms_lightning._ray import check_executor, require_ray
from fms_lightning._trainer import trial_trainer_kwargs
from fms_lightning.errors import ConfigurationError, FMSError, MissingMetricError, TrialFailedError
from fms_lightning.optim.module import NAdamWListModule
from fms_lightning.optim.presets import NADAMW_LIST, NAdamWPoint, preset_name

__all__ = ["SweepTrial", "SweepResult", "sweep"]

ModuleFactory = Callable[[NAdamWPoint], NAdamWListModule]
Mode = Literal["min", "max"]

#: CPUs (and torch threads) of each Ray trial.
RAY_TRIAL_CPUS = 1


@dataclass(frozen=True)
class SweepTrial:
    """One trained preset of a sweep.

    Attributes:
        rank: The preset's 1-based rank in the list.
        point: The preset.
        values: The monitored value after each validation epoch.
        best_value: The best of ``values`` (``None`` if the trial failed).
        best_epoch: The 1-based epoch of ``best_value``.
        error: Why the trial failed, or ``None``.
    """

    rank: int
    point: NAdamWPoint
    values: tuple[float, ...]
    best_value: float | None
    best_epoch: int | None
    error: str | None = None

    @property
    def final_value(self) -> float | None:
        """The monitored value after the last epoch."""
        return self.values[-1] if self.values else None


@dataclass(frozen=True)
class SweepResult:
    """All trials of a sweep, in list order.

    Attributes:
        trials: One :class:`SweepTrial` per preset, in rank order.
        monitor: The metric compared.
        mode: ``"max"`` or ``"min"``.
    """

    trials: tuple[SweepTrial, ...]
    monitor: str
    mode: Mode

    @property
    def best(self) -> SweepTrial:
        """The trial with the best ``best_value`` (the lower rank wins ties).

        Raises:
            TrialFailedError: If every trial failed.
        """
        ok = [t for t in self.trials if t.best_value is not None and math.isfinite(t.best_value)]
        if not ok:
            reasons = "; ".join(f"#{t.rank}: {t.error}" for t in self.trials)
            raise TrialFailedError(f"Every trial of the sweep failed or logged no finite {self.monitor!r}: {reasons}")
        sign = 1.0 if self.mode == "max" else -1.0
        return max(ok, key=lambda t: (sign * float(t.best_value), -t.rank))  # type: ignore[arg-type]

    def format_table(self) -> str:
        """A plain-text table of all trials, the best marked with ``*``."""
        try:
            best_rank: int | None = self.best.rank
        except TrialFailedError:
            best_rank = None
        head = f"{'rank':>4}  {'preset':<16}{'lr':>10}  {'wd':>8}  {'best ' + self.monitor:>14}  {'epoch':>5}  {'final':>8}"
        lines = [head, "-" * len(head)]
        for t in self.trials:
            name = preset_name(t.point) or f"#{t.rank}"
            mark = "*" if t.rank == best_rank else " "
            if t.best_value is None:
                tail = f"{'failed':>14}  {'-':>5}  {'-':>8}  {t.error or ''}"
            else:
                tail = f"{t.best_value:>14.4f}  {t.best_epoch:>5}  {t.final_value:>8.4f}"
            lines.append(f"{t.rank:>3}{mark}  {name:<16}{t.point.lr:>10.3g}  {t.point.weight_decay:>8.3g}  {tail}")
        return "\n".join(lines)


class _Recorder(Callback):
    """Keeps the monitored value after each validation epoch (sanity checks skipped)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.values: list[float] = []
        self.seen: list[str] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.seen = sorted(metrics)
        if self.monitor in metrics:
            self.values.append(float(metrics[self.monitor]))


def _run_trial(
    rank: int, point: NAdamWPoint, module_factory: ModuleFactory, datamodule: pl.LightningDataModule, *,
    max_epochs: int, monitor: str, mode: Mode, seed: int, trainer_kwargs: Mapping[str, Any], threads: int | None,
) -> SweepTrial:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = module_factory(point)
    if not isinstance(model, NAdamWListModule):
        raise ConfigurationError(
            f"module_factory must return a NAdamWListModule built with the point it is given, got "
            f"{type(model).__name__}; subclass fms_lightning.optim.NAdamWListModule."
        )
    recorder = _Recorder(monitor)
    options = trial_trainer_kwargs(trainer_kwargs, logger=False, after=[recorder])
    try:
        pl.Trainer(max_epochs=max_epochs, **options).fit(model, datamodule=datamodule)
    except FMSError:
        raise
    except Exception as err:  # noqa: BLE001 - a diverging or crashing trial is recorded, not fatal
        return SweepTrial(rank, point, tuple(recorder.values), None, None, f"{type(err).__name__}: {err}")
    if not recorder.values:
        raise MissingMetricError(
            f"The sweep monitors {monitor!r}, but validation logged only {recorder.seen}; log it with "
            f"self.log({monitor!r}, ...) in validation_step, or pass monitor= one of those."
        )
    finite = [(v, e) for e, v in enumerate(recorder.values, start=1) if math.isfinite(v)]
    if not finite:
        return SweepTrial(rank, point, tuple(recorder.values), None, None, f"{monitor} was never finite")
    pick = max if mode == "max" else min
    value, epoch = pick(finite, key=lambda ve: (ve[0], -ve[1]) if mode == "max" else (ve[0], ve[1]))
    return SweepTrial(rank, point, tuple(recorder.values), value, epoch)


def _process_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with torch and Lightning preloaded where available, else ``spawn``.

    Trials then start by forking a clean server that has imported them once,
    instead of importing torch in every process; neither method forks this
    (possibly multi-threaded) process itself.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def sweep(
    module_factory: ModuleFactory,
    datamodule: pl.LightningDataModule,
    *,
    top: int = 5,
    hparam_list: Sequence[NAdamWPoint] = NADAMW_LIST,
    max_epochs: int,
    monitor: str = "val_acc",
    mode: Mode = "max",
    parallel: int = 1,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    max_lost_worker_retries: int = 3,
) -> SweepResult:
    """Train the first ``top`` presets of a list and report the best (the paper's K-trial protocol).

    Args:
        module_factory: Builds the model for a point, e.g. ``functools.partial(DigitsCNN, hidden=64)``;
            called as ``module_factory(point)`` and must return a ``NAdamWListModule``.
            With ``parallel > 1`` it must be picklable (a module-level function,
            a class, or a ``functools.partial`` of one); with Ray, by ``cloudpickle``.
        datamodule: The data; every trial uses it (a copy per process when parallel or on Ray).
        top: ``K``, how many presets to run, from the front of the list.
        hparam_list: The ordered list (default ``NADAMW_LIST``; see ``load_hparam_list``).
        max_epochs: Epochs per trial; the schedule's horizon follows the Trainer.
        monitor: The validation metric to compare.
        mode: ``"max"`` or ``"min"``.
        parallel: How many trials run at once: in local processes (1 runs them in this process),
            or as Ray tasks with ``executor="ray"`` (where Ray's free CPUs also limit it).
        seed: Seed of every trial (``seed_everything``), so trials differ only by preset.
        trainer_kwargs: Extra ``lightning.Trainer`` options (they override the sweep's defaults:
            CPU, no logger, no checkpoints, no progress bar, deterministic).
        executor: ``"local"`` (processes of this machine) or ``"ray"`` (one Ray task per
            trial, needs ``pip install 'fms-lightning[ray]'``).
        ray_address: With ``executor="ray"``, the cluster to connect to when Ray is not
            initialized yet (default: ``RAY_ADDRESS``, else a new local runtime, which is
            shut down when the sweep ends). Call ``ray.init(...)`` first for more control.
        max_lost_worker_retries: How often a Ray trial whose worker or node was lost is
            run again before it is recorded as failed (as in ``FMSTuner``).

    Returns:
        A :class:`SweepResult` with every trial in list order and ``.best``.

    Raises:
        ConfigurationError: For a bad ``top``, ``parallel``, mode, epochs or executor, an
            unpicklable factory or datamodule with ``parallel > 1`` or Ray, or Ray missing.
        MissingMetricError: If validation never logs ``monitor``.
        FMSError: Any library error raised inside a trial, as its own type (also from Ray).

    >>> import functools
    >>> from fms_lightning.examples.digits import DigitsCNN
    >>> from fms_lightning.examples.sklearn_data import SklearnDataModule
    >>> result = sweep(functools.partial(DigitsCNN, hidden=16), SklearnDataModule("digits", as_image=True),
    ...                top=2, max_epochs=1)  # doctest: +SKIP
    >>> result.best.rank  # doctest: +SKIP
    2
    """
    points = tuple(hparam_list)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(points):
        raise ConfigurationError(f"top must be an integer in 1..{len(points)} (the list's length), got {top!r}.")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigurationError(f"parallel must be an integer >= 1, got {parallel!r}.")
    check_executor(executor, parallel)
    if ray_address is not None and executor != "ray":
        raise ConfigurationError(
            f"ray_address={ray_address!r} is only used with executor='ray', got executor={executor!r}."
        )
    if mode not in ("min", "max"):
        raise ConfigurationError(f"mode must be 'min' or 'max', got {mode!r}.")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigurationError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
    retries = LostWorkerRetries(max_lost_worker_retries)
    workers = min(parallel, top)
    kwargs = dict(trainer_kwargs or {})
    jobs = [(rank, points[rank - 1]) for rank in range(1, top + 1)]
    threads: int | None = None  # torch threads of each trial (None: this process's)
    if executor == "ray":
        threads = RAY_TRIAL_CPUS
    elif workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    if threads is not None:
        _check_picklable(executor, (module_factory, datamodule, kwargs), parallel)
    shared = (module_factory, datamodule, kwargs,
              dict(max_epochs=max_epochs, monitor=monitor, mode=mode, seed=seed, threads=threads))
    pool: Executor
    if executor == "ray":
        pool = RayExecutor(_run_job, shared, workers, address=ray_address, resources={"num_cpus": RAY_TRIAL_CPUS})
    elif workers > 1:
        pool = ProcessExecutor(_run_job, shared, workers, mp_context=_process_context())
    else:
        pool = LocalExecutor(_run_job, shared)
    outcomes = run_all(pool, jobs, retries)
    trials = [_as_trial(job, outcome, retries.times_lost(i)) for i, (job, outcome) in enumerate(zip(jobs, outcomes))]
    return SweepResult(tuple(trials), monitor, mode)


def _run_job(shared: tuple[Any, Any, Any, dict[str, Any]], job: tuple[int, NAdamWPoint]) -> SweepTrial:
    """``_run_trial`` as an executor job; ``shared``: (factory, datamodule, trainer_kwargs, options)."""
    module_factory, datamodule, trainer_kwargs, options = shared
    rank, point = job
    return _run_trial(rank, point, module_factory, datamodule, trainer_kwargs=trainer_kwargs, **options)


def _as_trial(job: tuple[int, NAdamWPoint], outcome: Any, times_lost: int) -> SweepTrial:
    """A job's outcome as a trial: a lost worker or another Ray failure is a failed trial."""
    rank, point = job
    if isinstance(outcome, LostWorker):
        return SweepTrial(rank, point, (), None, None, f"the Ray worker was lost {times_lost} times; last: {outcome.reason}")
    if isinstance(outcome, RayFailure):  # Ray gave up on it for another reason
        return SweepTrial(rank, point, (), None, None, outcome.reason)
    return outcome  # type: ignore[no-any-return]


def _check_picklable(executor: str, shared: Any, parallel: int) -> None:
    """Refuse a factory, datamodule or trainer_kwargs that cannot reach other processes.

    Raises:
        ConfigurationError: Saying how to make them picklable.
    """
    try:
        if executor == "ray":
            require_ray().cloudpickle.dumps(shared)
        else:
            pickle.dumps(shared)
    except Exception as err:  # noqa: BLE001 - pickling can raise many types
        if executor == "ray":
            raise ConfigurationError(
                "With executor='ray', the module factory, datamodule and trainer_kwargs go to Ray workers and "
                f"must be picklable (by cloudpickle), but pickling failed: {err}. Build unpicklable state "
                "(open files, locks, connections) inside the factory or the datamodule's setup, or use executor='local'."
            ) from err
        raise ConfigurationError(
            f"With parallel={parallel}, the module factory, datamodule and trainer_kwargs go to other "
            f"processes and must be picklable, but pickling failed: {err}. Use a module-level function or "
            "functools.partial, or parallel=1."
        ) from err

