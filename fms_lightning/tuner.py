"""FMSTuner: run Forecasting Model Search with Lightning, resumably, over a model hub.

Each step (Algorithm 1 of the FMS paper, one epoch at a time):

1. ask the :class:`~fms_lightning.optimizer.FMSOptimizer` for ``(trial, epoch)``;
2. restore that trial's last Lightning checkpoint (weights, optimizer,
   scheduler and loop state), or build it fresh with the hub weights;
3. train up to ``epoch`` with :class:`~fms_lightning.callbacks.WeightSnapshot`
   attached, which records the metric and the weights ``W_{i,j}`` into the study;
4. save the checkpoint atomically, tell the optimizer, and save its state.

The study folder holds everything; calling :meth:`FMSTuner.fit` again on the same
folder continues where the last run stopped (after a crash too): recorded epochs
are reused, and an interrupted trial restarts from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from fms_lightning import _resume
from fms_lightning._threads import check_threads
from fms_lightning.errors import ConfigurationError, FMSError, StudyError, TrialFailedError
from fms_lightning.executors import LocalExecutor, LostWorker, RayExecutor, RayFailure, RefitPacer
from fms_lightning.hub import ModelHub
from fms_lightning.optimizer import FMSOptimizer, Method, Suggestion
from fms_lightning.result import TuneResult, best_result, leaderboard, plot_study
from fms_lightning.segment import (
    BuildFn, DataModuleLike, SegmentResult, SegmentRunner, SegmentSpec, _DataModuleFromClass, datamodule_factory,
    load_hub_weights, quiet_lightning,
)
from fms_lightning.space import SearchSpace
from fms_lightning.storage import Storage, clean_stale_scratch
from fms_lightning.study import Study, TrialStatus

__all__ = ["FMSTuner", "load_hub_weights"]

log = logging.getLogger(__name__)

class _NullWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _summary_writer(path: Path) -> Any:
    """A TensorBoard writer for the tuner's own curves (a no-op if tensorboard is unavailable)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return _NullWriter()

    return SummaryWriter(str(path))


def _epochs(specs: list[SegmentSpec]) -> int:
    """Epochs the segments train (those in flight count against the budget)."""
    return sum(s.target - s.start_epoch for s in specs)


def _run_segment(runner: SegmentRunner, spec: SegmentSpec) -> SegmentResult:
    """A Ray task: one segment on a worker."""
    return runner.run(spec)


def _check_extra_kwargs(optimizer_kwargs: Mapping[str, Any] | None, trainer_kwargs: Mapping[str, Any] | None) -> None:
    """Refuse unknown or mistyped FMSOptimizer / Trainer options before anything runs."""
    from fms_lightning._kwargs import check_kwargs, check_trainer_kwargs

    check_kwargs(FMSOptimizer, dict(optimizer_kwargs or {}), where="optimizer", what="an FMSOptimizer option",
                 reserved=("space", "max_epochs", "method", "mode", "seed"),
                 reserved_hint="the tuner passes it; use FMSTuner's (or the recipe's) own key of that name "
                 "(max_epochs_per_trial for max_epochs)")
    check_trainer_kwargs(dict(trainer_kwargs or {}), reserved=("max_epochs",), construct=False,
                         reserved_hint="the tuner trains each segment to its target epoch; use max_epochs_per_trial")


class FMSTuner:
    """Tune hyperparameters and the choice of pretrained model with FMS on Lightning.

    Args:
        build: ``build(config, hub_entry) -> LightningModule``. The tuner loads the
            hub entry's weights into it (see :func:`load_hub_weights`).
        datamodule: A ``LightningDataModule``; its class, which is instantiated per
            trial with the config values its ``__init__`` names (so e.g.
            ``batch_size`` can be a hyperparameter); or ``config -> LightningDataModule``.
        space: The search space; a :class:`~fms_lightning.space.HubChoice`
            dimension picks the hub entry.
        hub: The :class:`~fms_lightning.hub.ModelHub` (required when the space has
            a hub dimension).
        monitor: The logged validation metric to optimise, e.g. ``"val_acc"``.
        mode: ``"max"`` or ``"min"``.
        budget_epochs: Total epochs to train over all trials.
        max_epochs_per_trial: The longest any trial trains; also the schedule
            horizon (``NAdamWListModule`` gets ``total_epochs`` set to it).
        method: ``"fms-gmn"``, ``"fms-flat"``, ``"dyhpo"``, ``"gp"`` or ``"random"``.
        study_dir: The study folder (created, or continued when it exists). It
            holds the study's rows; only this process writes them.
        seed: Seeds the optimizer and every trial's training epochs.
        trainer_kwargs: Extra ``lightning.Trainer`` arguments (e.g. ``accelerator``).
        optimizer_kwargs: Extra :class:`~fms_lightning.optimizer.FMSOptimizer`
            arguments (``n_candidates``, ``learning_curve``, ...).
        gmn_training: How much of the GMN ``"fms-gmn"`` trains in the loop: ``"frozen"``,
            ``"readout"`` or ``"full"`` (see :class:`~fms_lightning.optimizer.FMSOptimizer`);
            None keeps the optimizer's default.
        progress: Show a progress bar over the budget.
        max_consecutive_failures: Stop with an error after this many trials in a
            row fail (an integer >= 1).
        executor: ``"local"`` trains one segment at a time in this process;
            ``"ray"`` trains up to ``max_concurrent`` at once as Ray tasks (needs
            ``pip install 'fms-lightning[ray]'``). Suggestions are pending-aware, so
            parallel segments spread out.
        max_concurrent: Segments in flight at once (``executor="ray"`` only).
        storage: Where checkpoints, snapshots and trial logs are written: a local
            path or an fsspec URL that every worker can reach. Default: ``study_dir``.
            Snapshots are also copied into ``study_dir``, which stays self-contained.
            Each study writes only under its own folder of the storage
            (``STORAGE/<study_id>/``, the id kept in the study), so studies may
            share one storage.
        ray_address: The cluster to connect to when Ray is not yet initialised
            (``None``: ``RAY_ADDRESS``, else a local runtime). Call ``ray.init``
            yourself for other options.
        resources_per_trial: Ray resources per segment, default ``{"num_cpus": 1}``
            (e.g. ``{"num_cpus": 2, "num_gpus": 1}``).
        max_lost_worker_retries: How often one segment is re-run after its worker
            or node died, before its trial is failed.
        surrogate_threads: Torch intra-op threads for the surrogate's fits and
            suggestions, in this process (default 1, much faster for its small
            matrices; your ``torch.get_num_threads()`` is restored afterwards, so
            training keeps it). ``None`` leaves torch's setting.

    Raises:
        ConfigurationError: For a bad mode, budget, method, executor, an unknown
            or mistyped ``optimizer_kwargs`` / ``trainer_kwargs`` key, a hub
            dimension without a hub, or a DataModule class that needs arguments the
            space does not provide (each message says what was expected).

    >>> tuner = FMSTuner(build, dm, space, hub, monitor="val_acc", mode="max",  # doctest: +SKIP
    ...                  budget_epochs=40, max_epochs_per_trial=10, study_dir="runs/study")
    >>> result = tuner.fit()  # doctest: +SKIP
    >>> result.best_config, result.best_value  # doctest: +SKIP
    """

    def __init__(
        self,
        build: BuildFn,
        datamodule: DataModuleLike,
        space: SearchSpace,
        hub: ModelHub | None = None,
        *,
        monitor: str,
        mode: Literal["min", "max"],
        budget_epochs: int,
        max_epochs_per_trial: int,
        method: str = "fms-gmn",
        study_dir: str | os.PathLike[str],
        seed: int = 0,
        trainer_kwargs: Mapping[str, Any] | None = None,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        progress: bool = True,
        max_consecutive_failures: int = 5,
        executor: Literal["local", "ray"] = "local",
        max_concurrent: int = 1,
        storage: str | os.PathLike[str] | None = None,
        ray_address: str | None = None,
        resources_per_trial: Mapping[str, Any] | None = None,
        max_lost_worker_retries: int = 3,
        gmn_training: Literal["frozen", "readout", "full"] | None = None,
        surrogate_threads: int | None = 1,
    ) -> None:
        from fms_lightning._ray import check_executor

        if not callable(build):
            raise ConfigurationError(f"build must be callable as build(config, hub_entry), got {build!r}.")
        datamodule = datamodule_factory(datamodule)
        if not isinstance(space, SearchSpace):
            raise ConfigurationError(f"space must be a SearchSpace, got {type(space).__name__}.")
        if isinstance(datamodule, _DataModuleFromClass):
            _check_datamodule_class(datamodule, space)
        if mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', got {mode!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"monitor must name a logged metric such as 'val_acc', got {monitor!r}.")
        if not isinstance(max_epochs_per_trial, int) or max_epochs_per_trial < 1:
            raise ConfigurationError(f"max_epochs_per_trial must be an integer >= 1, got {max_epochs_per_trial!r}.")
        if not isinstance(budget_epochs, int) or budget_epochs < 1:
            raise ConfigurationError(
                f"budget_epochs must be at least one epoch (an integer >= 1), got {budget_epochs!r}."
            )
        try:
            Method(method)
        except ValueError:
            raise ConfigurationError(f"Unknown method {method!r}; expected one of {[m.value for m in Method]}.") from None
        check_executor(executor, max_concurrent)
        if executor == "local" and max_concurrent != 1:
            raise ConfigurationError(
                f"max_concurrent={max_concurrent} needs executor='ray'; the local executor trains one segment at a time."
            )
        if isinstance(max_lost_worker_retries, bool) or not isinstance(max_lost_worker_retries, int) \
                or max_lost_worker_retries < 0:
            raise ConfigurationError(f"max_lost_worker_retries must be an integer >= 0, got {max_lost_worker_retries!r}.")
        if isinstance(max_consecutive_failures, bool) or not isinstance(max_consecutive_failures, int) \
                or max_consecutive_failures < 1:
            raise ConfigurationError(
                f"max_consecutive_failures must be an integer >= 1, got {max_consecutive_failures!r}."
            )
        _check_extra_kwargs(optimizer_kwargs, trainer_kwargs)
        for name, value in (("study_dir", study_dir), ("storage", storage)):
            if value is not None and not os.fspath(value).strip():
                raise ConfigurationError(f"{name} must name a folder (or, for storage, a URL), got {value!r}.")
        if space.hub_name is not None:
            if hub is None:
                raise ConfigurationError(
                    f"The search space has a hub dimension {space.hub_name!r} but no hub was given; pass hub=ModelHub(...)."
                )
            missing = [v for v in space[space.hub_name].values if v not in hub.names]  # type: ignore[attr-defined]
            if missing:
                raise ConfigurationError(f"Hub dimension values {missing} are not entries of the hub {hub.names}.")
        self.space = space
        self.hub = hub
        self.monitor = monitor
        self.mode = mode
        self.budget_epochs = budget_epochs
        self.max_epochs_per_trial = max_epochs_per_trial
        self.method = Method(method)
        self.study_dir = Path(study_dir)
        self.seed = int(seed)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        if gmn_training is not None:
            self.optimizer_kwargs["gmn_training"] = gmn_training
        self.progress = progress
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.executor = executor
        self.max_concurrent = max_concurrent
        self.ray_address = ray_address
        self.resources_per_trial = dict(resources_per_trial or {})
        self.max_lost_worker_retries = max_lost_worker_retries
        self.surrogate_threads = check_threads(surrogate_threads)
        self.storage = Storage(storage if storage is not None else self.study_dir)
        self._storage_base = self.storage  # fit() narrows self.storage to the study's own folder of it
        self.runner = SegmentRunner(build, datamodule, hub, space.hub_name, monitor, self.seed, max_epochs_per_trial,
                                    self.storage, dict(trainer_kwargs or {}))
        self._start_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._graph_modules: dict[str, pl.LightningModule] = {}
        self.study: Study | None = None
        self.optimizer: FMSOptimizer | None = None
        #: The segments trained by the last :meth:`fit` call, in the order they finished.
        self.segments: list[SegmentResult] = []
        #: Seconds each suggestion of the last :meth:`fit` call took (surrogate fit and EI_MF), in order.
        self.suggest_seconds: list[float] = []
        #: Segments of the last :meth:`fit` call whose worker or node was lost, with the reason (each was re-run).
        self.lost_segments: list[tuple[SegmentSpec, str]] = []
        self._first_failure: tuple[int, Path | None, str | None] = (0, None, None)

    # ------------------------------------------------------------------ helpers
    def _entry_key(self, config: Mapping[str, Any]) -> str:
        """The cache key of a config's architecture and starting weights: its hub entry."""
        entry = self.runner.entry(config)
        return entry.name if entry is not None else "__fresh__"

    def _settings(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "monitor": self.monitor, "mode": self.mode,
                "max_epochs_per_trial": self.max_epochs_per_trial, "method": self.method.value, "seed": self.seed}

    def _start_weights(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """W_{i,0} of a new config: the module built with its hub weights (cached per entry)."""
        key = self._entry_key(config)
        if key not in self._start_cache:
            torch.manual_seed(self.seed)
            module = self.runner.make_module(config, load_weights=True)
            self._start_cache[key] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self._graph_modules.setdefault(key, module)  # same architecture: _graph need not build it again
        return self._start_cache[key]

    def _graph(self, config: dict[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Any:
        """G(W): the parameter graph of a trial's module with weights ``state_dict``.

        The module's architecture depends on the hub entry only, so one module per
        entry is traced. A LightningModule's ``example_input_array`` (if set) is
        passed along so shapes can be propagated (needed e.g. for DeepSets pooling).
        """
        from fms_lightning.weightspace import parameter_graph

        key = self._entry_key(config)
        module = self._graph_modules.get(key)
        if module is None:
            module = self._graph_modules[key] = self.runner.make_module(config, load_weights=False)
        example = getattr(module, "example_input_array", None)
        return parameter_graph(module, state_dict, example_input=example)

    @staticmethod
    def _checkpoint(study: Study, study_trial: int) -> tuple[int, str | None]:
        """(epoch, storage path) of the trial's committed checkpoint, or (0, None)."""
        found = study.checkpoint(study_trial)
        return found if found is not None else (0, None)

    # ------------------------------------------------------------------ segments
    def _new_optimizer(self) -> FMSOptimizer:
        kwargs = dict(self.optimizer_kwargs)
        kwargs.setdefault("surrogate_threads", self.surrogate_threads)
        if self.method.uses_weights:
            kwargs.setdefault("graph_fn", self._graph)
            kwargs.setdefault("starting_weights_fn", self._start_weights)
        return FMSOptimizer(self.space, max_epochs=self.max_epochs_per_trial, method=self.method.value,
                            mode=self.mode, seed=self.seed, **kwargs)

    def _spec(self, study: Study, study_trial: int, opt_trial: int, config: dict[str, Any], target: int) -> SegmentSpec:
        epoch, path = self._checkpoint(study, study_trial)
        return SegmentSpec(study_trial, opt_trial, dict(config), epoch, target, path)

    def _commit(self, study: Study, result: SegmentResult) -> None:
        """Record a finished segment in the study, in one transaction (the driver is the only writer).

        Snapshot files written to another storage are first copied into the study folder.
        """
        sid = result.spec.study_trial
        for rel in [r.snapshot for r in result.records] + ([result.start_snapshot] if result.start_snapshot else []):
            self.storage.copy_to(rel, study.path / rel)
        checkpoint = (result.spec.target, result.checkpoint) if result.checkpoint is not None else None
        study.commit_segment(sid, [r.as_row() for r in result.records], start_snapshot=result.start_snapshot,
                             checkpoint=checkpoint)
        if result.checkpoint is not None:  # older checkpoints of the trial are no longer needed
            folder = result.checkpoint.rsplit("/", 1)[0]
            for rel in self.storage.list(folder):
                if rel != result.checkpoint:
                    with contextlib.suppress(OSError):
                        self.storage.delete(rel)

    def _train_segment(self, study: Study, study_trial: int, config: dict[str, Any], target: int) -> SegmentResult:
        """Train ``study_trial`` up to ``target`` epochs in this process and commit it.

        Raises:
            TrialFailedError: If the trial failed (its epochs before the failure are committed).
        """
        spec = self._spec(study, study_trial, study.trial(study_trial).opt_trial_id or 0, config, target)
        study.set_status(study_trial, TrialStatus.RUNNING)
        result = self.runner.run(spec)
        self._commit(study, result)
        if result.error is not None:
            raise TrialFailedError(result.error)
        return result

    def _tell(self, opt: FMSOptimizer, study: Study, opt_trial: int, study_trial: int) -> None:
        """Feed the optimizer every committed observation of the trial it has not seen.

        The optimizer's state is saved only when something was observed.
        """
        known = opt.trial(opt_trial).epochs
        new = [o for o in study.observations(study_trial) if o.epoch > known]
        for o in new:
            weights = str(study.path / o.snapshot) if o.snapshot else None
            opt.observe(opt_trial, o.epoch, o.value, weights=weights)
        if new:
            study.save_tuner_state(opt.state_dict())

    def _pretrain_from_recorded_runs(self, opt: FMSOptimizer, study: Study) -> int:
        """Pretrain the surrogate on runs that ``WeightSnapshot`` recorded outside the tuner.

        A run is used when its config (with its hub entry as the hub dimension) fits
        the search space, it logged the tuner's ``monitor`` at every epoch, its epochs
        are contiguous from 1 and, for the fms methods, its weights were recorded.
        The values learned are the tuner's ``monitor``, whatever the run monitored,
        over the run's first ``max_epochs_per_trial`` epochs.
        A run that is skipped, or that monitored another metric or mode, is named
        in a warning. Returns the number of runs used.
        """
        from fms_lightning.errors import SearchSpaceError

        runs, other = [], []
        for t in study.trials():
            if t.opt_trial_id is not None:
                continue
            obs = study.observations(t.trial_id)
            config = {k: t.config[k] for k in self.space.names if k in t.config}
            hub_name = self.space.hub_name
            if hub_name is not None and hub_name not in config and t.hub_entry is not None:
                config[hub_name] = t.hub_entry  # WeightSnapshot(hub_entry=...)
            try:
                self.space.validate(config)
            except SearchSpaceError as err:
                hint = (f" Pass WeightSnapshot(..., hub_entry=<the hub model's name>)."
                        if hub_name is not None and hub_name not in config else "")
                log.warning("Not learning from recorded trial %s: %s%s", t.trial_id, err, hint)
                continue
            if not obs or [o.epoch for o in obs] != list(range(1, len(obs) + 1)):
                log.warning("Not learning from recorded trial %s: its epochs %s are not 1, 2, ... (every_n_epochs > 1, "
                            "or none recorded).", t.trial_id, [o.epoch for o in obs])
                continue
            obs = obs[: self.max_epochs_per_trial]  # the surrogate's budgets end there
            recorded = study.run_settings(t.trial_id)
            same = recorded.get("monitor") in (None, self.monitor)
            values = [o.metrics.get(self.monitor, o.value if same else None) for o in obs]
            if any(v is None for v in values):
                log.warning("Not learning from recorded trial %s: it monitored %r and did not log the tuner's %r "
                            "(it logged %s).", t.trial_id, recorded.get("monitor"), self.monitor,
                            sorted(obs[0].metrics))
                continue
            if not same or recorded.get("mode") not in (None, self.mode):
                other.append(f"{t.trial_id} ({recorded.get('monitor')}, mode {recorded.get('mode')})")
            run: dict[str, Any] = {"config": config, "curve": values}
            if self.method.uses_weights:
                start = study.start_weights_path(t.trial_id)
                if start is None or any(o.snapshot is None for o in obs):
                    log.warning("Not learning from recorded trial %s: %s needs its weight snapshots, and its "
                                "starting weights were not recorded.", t.trial_id, self.method.value)
                    continue
                run["weights"] = [str(study.path / start)] + [str(study.path / str(o.snapshot)) for o in obs]
            runs.append(run)
        if other:
            log.warning("Recorded trials %s were run with another monitor or mode; the tuner learns their logged %r "
                        "as values to %simise.", ", ".join(other), self.monitor, self.mode)
        if runs:
            opt.pretrain(runs)
            log.info("Pretrained the surrogate on %d run(s) recorded in the study.", len(runs))
        return len(runs)

    def _restore(self, opt: FMSOptimizer, study: Study) -> list[Suggestion]:
        """Bring the optimizer up to date with the study; returns the suggestions still to train.

        Runs recorded by ``WeightSnapshot`` since the last ``fit`` (or before the
        first) are learned from: the surrogate is pretrained again on all of them.
        """
        recorded = [t.trial_id for t in study.trials() if t.opt_trial_id is None]
        seen = set(study.get_meta("recorded_runs_seen", []))
        new = [tid for tid in recorded if tid not in seen]
        if new:
            if opt.trial_ids:
                log.warning("Trials %s were recorded into the study since it was last tuned; pretraining the "
                            "surrogate again on every recorded run.", new)
            self._pretrain_from_recorded_runs(opt, study)
            study.set_meta("recorded_runs_seen", recorded)
            study.save_tuner_state(opt.state_dict())
        for t in study.trials():  # what was committed after the last saved optimizer state
            if t.opt_trial_id not in opt.trial_ids:
                continue
            self._tell(opt, study, t.opt_trial_id, t.trial_id)
            status = opt.trial(t.opt_trial_id).status
            if t.status is TrialStatus.FAILED and status is not TrialStatus.FAILED:
                opt.mark_failed(t.opt_trial_id, t.reason or "failed")
                study.save_tuner_state(opt.state_dict())
            elif status is not TrialStatus.RUNNING and t.status is TrialStatus.RUNNING:
                study.set_status(t.trial_id, status)
        # Trials the optimizer handed out but that never finished: train them first.
        return opt.pending()

    def _optimizer_from_study(self, study: Study) -> FMSOptimizer:
        """The optimizer as the study's stored state left it, or rebuilt from the rows when the state is unusable.

        The rows are the source of truth: a missing or corrupt tuner state costs the
        surrogate's fit and the random stream (later suggestions differ from an
        uninterrupted run), never an observation.
        """
        opt = self._new_optimizer()
        tuner_trials = [t for t in study.trials() if t.opt_trial_id is not None]
        try:
            state = study.load_tuner_state()
            if state is not None:
                opt.load_state_dict(state)
                return opt
            if not tuner_trials:  # a new study: _restore pretrains on the recorded runs
                return opt
            problem = f"The study at {str(study.path)!r} has no tuner state."
        except (StudyError, ConfigurationError, KeyError, TypeError, ValueError, RuntimeError) as err:
            problem = str(err) if isinstance(err, StudyError) else (
                f"The tuner state stored in {str(study.path / 'study.sqlite')!r} does not fit this tuner "
                f"({type(err).__name__}: {err}).")
        warnings.warn(f"{problem} Rebuilding it from the study's {len(tuner_trials)} trials and "
                      f"{study.budget_used(tuner_only=True)} recorded epochs, which are intact; the surrogate is "
                      "refit, so later suggestions differ from an uninterrupted run.", RuntimeWarning, stacklevel=3)
        opt = self._new_optimizer()
        self._pretrain_from_recorded_runs(opt, study)
        study.set_meta("recorded_runs_seen", [t.trial_id for t in study.trials() if t.opt_trial_id is None])
        _resume.rebuild_trials(opt, study, tuner_trials, random=self.method is Method.RANDOM,
                               max_epochs=self.max_epochs_per_trial)
        study.save_tuner_state(opt.state_dict())
        return opt

    def _make_executor(self) -> LocalExecutor | RayExecutor:
        if self.executor == "ray":
            cpus = self.resources_per_trial.get("num_cpus", 1)  # each task uses as many torch threads
            runner = replace(self.runner, threads=max(1, int(cpus)) if cpus else None)
            return RayExecutor(_run_segment, runner, self.max_concurrent, address=self.ray_address,
                               resources=self.resources_per_trial)
        return LocalExecutor(self.runner)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TuneResult:
        """Run (or continue) the study until ``budget_epochs`` epochs are trained.

        Segments in flight count against the budget, so the study stops at the
        budget; a segment that trains several epochs at once (``method="random"``
        trains each trial to ``max_epochs_per_trial``) may go past it.

        Returns:
            A :class:`~fms_lightning.result.TuneResult`.

        Raises:
            StudyLockedError: If another process is running this study.
            ConfigurationError: If the study folder holds a study with other
                settings, ``build`` does not return a LightningModule, or
                ``monitor`` is never logged.
            TrialFailedError: If every trial failed (the message quotes the reasons),
                or ``max_consecutive_failures`` trials failed in a row.
        """
        from fms_lightning._progress import BudgetProgress

        with Study(self.study_dir) as study:
            self.study = study
            stored = study.get_meta("tuner_settings")
            if stored is not None and stored != self._settings():
                raise ConfigurationError(
                    f"The study at {str(self.study_dir)!r} was created with other settings: "
                    f"{_settings_diff(stored, self._settings())}. Use a new study_dir, or the study's settings "
                    "to continue it."
                )
            if study.schema_version < 2 and any(t.opt_trial_id is not None for t in study.trials()):
                raise ConfigurationError(
                    f"The study at {str(self.study_dir)!r} was written by an earlier development version of "
                    "fms-lightning that did not record committed checkpoints, so its trials cannot be resumed; "
                    "use a new study_dir (WeightSnapshot runs in it can still be read with Study)."
                )
            study.set_meta("tuner_settings", self._settings())
            self.storage, storage_lock = _resume.claim_storage(self._storage_base, study, self.study_dir)
            self.runner = replace(self.runner, storage=self.storage)
            try:
                clean_stale_scratch()
                _resume.remove_superseded_checkpoints(self.storage, study)
                _resume.warn_damaged_snapshots(study)
                opt = self.optimizer = self._optimizer_from_study(study)
                unfinished = self._restore(opt, study)
            except BaseException:
                if storage_lock is not None:
                    storage_lock.close()
                raise
            self.segments, self.suggest_seconds, self.lost_segments = [], [], []
            failures: list[str] = []
            lost: Counter[int] = Counter()
            used = study.budget_used(tuner_only=True)
            executor = self._make_executor()
            pace = RefitPacer()
            writer = _summary_writer(self.study_dir / "tensorboard" / "tuner")
            try:
                with BudgetProgress(self.budget_epochs, enabled=self.progress, initial=used) as bar, writer:
                    while True:
                        while (len(executor) < executor.capacity
                               and used + _epochs(executor.in_flight) < self.budget_epochs):
                            spec = self._next_spec(opt, study, unfinished, writer, used)
                            executor.submit(spec)
                            pace.submitted(spec)
                        if not len(executor):
                            break
                        # Take in every segment that has finished, or will before a surrogate refit
                        # could be done, before suggesting again: one fit then serves all of them.
                        done = executor.next_done()
                        while done is not None:
                            spec, outcome = done
                            pace.finished(spec, outcome.seconds if isinstance(outcome, SegmentResult) else None)
                            if isinstance(outcome, RayFailure):
                                raise outcome.error
                            if isinstance(outcome, LostWorker):
                                outcome = self._rerun_or_fail(spec, outcome, lost)
                            if outcome is None:  # re-run from the same committed checkpoint
                                executor.submit(spec)
                                pace.submitted(spec)
                            else:
                                self._finish(opt, study, outcome, failures)
                            done = executor.next_done(timeout=pace.wait_seconds(self.suggest_seconds))
                        used = study.budget_used(tuner_only=True)
                        best = opt.best()
                        bar.update_to(used, None if best is None else best[3],
                                      running=len(executor) if executor.capacity > 1 else None)
                        if best is not None:
                            writer.add_scalar("tuner/incumbent", best[3], used)
                        fit_loss = getattr(opt.surrogate, "last_fit_loss", None)
                        if fit_loss is not None:
                            writer.add_scalar("tuner/surrogate_fit_loss", fit_loss, used)
            finally:
                executor.close()
                if storage_lock is not None:
                    storage_lock.close()
            return self._result(study)

    def _next_spec(self, opt: FMSOptimizer, study: Study, unfinished: list[Suggestion], writer: Any,
                   used: int) -> SegmentSpec:
        """The next suggestion as a segment, durable in the study before it is trained."""
        t0 = time.perf_counter()
        s = unfinished.pop(0) if unfinished else opt.suggest()
        self.suggest_seconds.append(time.perf_counter() - t0)
        writer.add_scalar("tuner/suggest_seconds", self.suggest_seconds[-1], used)
        study.save_tuner_state(opt.state_dict())  # the suggestion is now durable
        entry = self.runner.entry(s.config)
        sid = study.add_trial(s.config, entry.name if entry else None, opt_trial_id=s.trial_id)
        study.set_status(sid, TrialStatus.RUNNING)
        return self._spec(study, sid, s.trial_id, dict(s.config), s.epoch)

    def _rerun_or_fail(self, spec: SegmentSpec, lost: LostWorker, counts: Counter[int]) -> SegmentResult | None:
        """``None`` if a segment whose worker was lost should run again, else its failure."""
        self.lost_segments.append((spec, lost.reason))
        counts[spec.study_trial] += 1
        if counts[spec.study_trial] <= self.max_lost_worker_retries:
            log.warning("Trial %s: %s; re-running it from epoch %s.", spec.study_trial, lost.reason, spec.start_epoch)
            return None
        reason = f"LostWorker: its worker was lost {counts[spec.study_trial]} times; last: {lost.reason}"
        return SegmentResult(spec, (), None, None, reason, "", time.time())

    def _finish(self, opt: FMSOptimizer, study: Study, result: SegmentResult, failures: list[str]) -> None:
        """Commit a finished segment, tell the optimizer, and track consecutive failures."""
        spec = result.spec
        self.segments.append(result)
        self._commit(study, result)
        if result.error is None:
            self._tell(opt, study, spec.opt_trial, spec.study_trial)
            done = spec.target >= self.max_epochs_per_trial
            study.set_status(spec.study_trial, TrialStatus.COMPLETED if done else TrialStatus.PAUSED)
            failures.clear()
            return
        trace = self._save_traceback(result)
        log.warning("Trial %s failed: %s%s", spec.study_trial, result.error,
                    f" (traceback: {trace})" if trace is not None else "")
        study.set_status(spec.study_trial, TrialStatus.FAILED, reason=result.error)
        with contextlib.suppress(FMSError):
            self._tell(opt, study, spec.opt_trial, spec.study_trial)
        opt.mark_failed(spec.opt_trial, result.error)
        study.save_tuner_state(opt.state_dict())
        failures.append(f"trial {spec.study_trial}: {result.error}")
        if len(failures) == 1:
            self._first_failure = (spec.study_trial, trace, result.traceback)
        if len(failures) >= self.max_consecutive_failures:
            first, path, text = self._first_failure
            shown = ""
            if text:
                lines = text.rstrip().splitlines()
                cut = ["  ..."] if len(lines) > 40 else []
                shown = f"\nTraceback of trial {first}, the first of them" + (f" (in full in {path})" if path else "") \
                    + ":\n" + "\n".join(cut + lines[-40:])
            raise TrialFailedError(
                f"{len(failures)} trials in a row failed; stopping. Reasons:\n  " + "\n  ".join(failures) + shown
            )

    def _save_traceback(self, result: SegmentResult) -> Path | None:
        """Write a failed segment's traceback to ``STUDY_DIR/failures/trial_NNNNN.txt``; its path."""
        if not result.traceback:
            return None
        path = self.study_dir / "failures" / f"trial_{result.spec.study_trial:05d}.txt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"Trial {result.spec.study_trial}, config {result.spec.config}, epochs "
                            f"{result.spec.start_epoch}->{result.spec.target}, on {result.worker}\n\n{result.traceback}")
        except OSError:
            return None
        return path

    def _result(self, study: Study) -> TuneResult:
        board = leaderboard(study, self.mode, trials=[t for t in study.trials() if t.opt_trial_id is not None])
        if not board or board[0].best_value is None:
            reasons = [f"trial {r.trial_id}: {r.reason}" for r in board if r.reason]
            where = self.study_dir / "failures"
            hint = f"\nTracebacks are in {where}." if where.is_dir() else ""
            raise TrialFailedError("Every trial failed. Reasons:\n  " + "\n  ".join(reasons or ["(none recorded)"])
                                   + hint)
        plot = plot_study(study, self.mode, self.study_dir / "study.png", monitor=self.monitor)
        result = best_result(study, self.mode, tuner_only=True)
        return replace(result, study_dir=str(self.study_dir), plot=plot)


def _settings_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"max_epochs_per_trial is 10 in the study, 8 here"``, for each setting that differs."""
    parts = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if key == "space" and isinstance(old, Mapping) and isinstance(new, Mapping):
            dims = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            parts.append(f"the search space differs in {', '.join(repr(d) for d in dims)} "
                         f"(study: {[old.get(d) for d in dims]}, here: {[new.get(d) for d in dims]})")
        else:
            parts.append(f"{key} is {old!r} in the study, {new!r} here")
    return "; ".join(parts)


def _check_datamodule_class(factory: _DataModuleFromClass, space: SearchSpace) -> None:
    """Refuse a DataModule class whose required ``__init__`` arguments the space does not give.

    Raises:
        ConfigurationError: Naming the missing arguments.
    """
    import inspect

    params = inspect.signature(factory.cls.__init__).parameters
    missing = [n for n in factory.names if params[n].default is inspect.Parameter.empty and n not in space.names]
    if missing:
        raise ConfigurationError(
            f"datamodule={factory.cls.__name__} is a class, which the tuner instantiates per trial with the "
            f"config values its __init__ names, but it requires {missing}, which the search space "
            f"{list(space.names)} does not have. Give those arguments defaults, or pass "
            f"datamodule=lambda config: {factory.cls.__name__}(...)."
        )
