"""FMSTuner: run Forecasting Model Search with Lightning, resumably, over a model hub.

Each step (Algorithm 1 of the FMS paper, one epoch at a time):

1. ask the :class:`~fms_lightning.optimizer.FMSOptimizer` for ``(trial, epoch)``;
2. restore that trial's last Lightning checkpoint (weights, optimizer,
   scheduler and loop state), or build it fresh with the hub weights;
3. train up to ``epoch`` with :class:`~fms_lightning.callbacks.WeightSnapshot`
   attached, which records the metric and the weights ``W_{i,j}``;
4. commit the segment to the study, tell the optimizer, and save its state.

The study folder holds everything; calling :meth:`FMSTuner.fit` again on the same
folder continues where the last run stopped (after a crash too): recorded epochs
are reused, and an interrupted trial restarts from its last complete checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from fms_lightning import _resume
from fms_lightning._threads import check_threads
from fms_lightning.hub import ModelHub
from fms_lightning.optimizer import FMSOptimizer, Method
from fms_lightning.result import TuneResult
from fms_lightning.space import SearchSpace
from fms_lightning.storage import Storage, clean_stale_scratch
from fms_lightning.study import Study
from fms_lightning.tuner import sync
from fms_lightning.tuner._loop import TrainingLoop, make_executor, summary_writer
from fms_lightning.tuner._result import build_result
from fms_lightning.tuner._settings import check_arguments, check_study, resolve_fit_while_training
from fms_lightning.tuner.segment import (
    BuildFn, DataModuleLike, SegmentResult, SegmentRunner, SegmentSpec, StartWeights, datamodule_factory,
)

__all__ = ["FMSTuner"]


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
        fit_while_training: With ``executor="local"``: while each segment trains, fit the
            surrogate in a forked process to the observations so far
            (:meth:`FMSOptimizer.fit_ahead <fms_lightning.optimizer.FMSOptimizer.fit_ahead>`);
            the next suggestion then only conditions on the segment's epochs, so the fit's
            time is hidden behind training (the suggestions use parameters one observation
            stale, except in the from-scratch phase, which is not fit ahead). Training
            itself is unchanged: the fit never runs in the training's process. ``"auto"``:
            on for the local executor and a model-based method where processes can fork
            (Linux, macOS). Off by default: on the digits demo it saved 12% of the wall
            time, but its suggestions ended a little lower (best ``val_acc`` over seeds
            0-4); it pays most when an epoch takes longer than a surrogate refit.

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
        fit_while_training: bool | Literal["auto"] = False,
    ) -> None:
        datamodule = datamodule_factory(datamodule)
        check_arguments(build=build, datamodule=datamodule, space=space, hub=hub, monitor=monitor, mode=mode,
                        budget_epochs=budget_epochs, max_epochs_per_trial=max_epochs_per_trial, method=method,
                        executor=executor, max_concurrent=max_concurrent, trainer_kwargs=trainer_kwargs,
                        max_lost_worker_retries=max_lost_worker_retries, optimizer_kwargs=optimizer_kwargs,
                        max_consecutive_failures=max_consecutive_failures, study_dir=study_dir, storage=storage)
        self.space, self.hub, self.monitor, self.mode, self.seed = space, hub, monitor, mode, int(seed)
        self.budget_epochs, self.max_epochs_per_trial = budget_epochs, max_epochs_per_trial
        self.method, self.study_dir = Method(method), Path(study_dir)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        if gmn_training is not None:
            self.optimizer_kwargs["gmn_training"] = gmn_training
        self.progress, self.max_consecutive_failures = progress, int(max_consecutive_failures)
        self.executor, self.max_concurrent, self.ray_address = executor, max_concurrent, ray_address
        self.resources_per_trial = dict(resources_per_trial or {})
        self.max_lost_worker_retries = max_lost_worker_retries
        self.surrogate_threads = check_threads(surrogate_threads)
        #: Whether each segment trains while the surrogate is fit ahead (``fit_while_training`` resolved).
        self.fit_while_training = resolve_fit_while_training(fit_while_training, executor, method)
        self.storage = Storage(storage if storage is not None else self.study_dir)
        self._storage_base = self.storage  # fit() narrows self.storage to the study's own folder of it
        self.runner = SegmentRunner(build, datamodule, hub, space.hub_name, monitor, self.seed, max_epochs_per_trial,
                                    self.storage, dict(trainer_kwargs or {}))
        #: W_{i,0} and G(W) of each hub entry's module, as the optimizer sees them.
        self.start_weights = StartWeights(self.runner)
        self.optimizer: FMSOptimizer | None = None
        #: The segments trained by the last :meth:`fit` call, in the order they finished.
        self.segments: list[SegmentResult] = []
        #: Seconds each suggestion of the last :meth:`fit` call took (surrogate fit and EI_MF), in order.
        self.suggest_seconds: list[float] = []
        #: Segments of the last :meth:`fit` call whose worker or node was lost, with the reason (each was re-run).
        self.lost_segments: list[tuple[SegmentSpec, str]] = []
        #: Per segment of the last :meth:`fit` call trained while the surrogate was fit ahead: the seconds the
        #: fit took in its process (None if it failed), and the seconds waited for it after training.
        self.fit_ahead_seconds: list[tuple[float | None, float]] = []

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
            check_study(study, self._settings(), self.study_dir)
            self.storage, storage_lock = _resume.claim_storage(self._storage_base, study, self.study_dir)
            self.runner = replace(self.runner, storage=self.storage)
            try:
                clean_stale_scratch()
                _resume.remove_superseded_checkpoints(self.storage, study)
                _resume.warn_damaged_snapshots(study)
                opt = self.optimizer = sync.load_optimizer(
                    self._new_optimizer, study, pretrain=lambda o: self._pretrain(o, study),
                    random=self.method is Method.RANDOM, max_epochs=self.max_epochs_per_trial)
                unfinished = sync.learn_recorded_runs(opt, study, lambda o: self._pretrain(o, study))
                self.segments, self.suggest_seconds, self.lost_segments, self.fit_ahead_seconds = [], [], [], []
                executor = make_executor(self, _run_segment)
            except BaseException:
                if storage_lock is not None:
                    storage_lock.close()
                raise
            loop = TrainingLoop(self, opt, study, unfinished)
            initial = study.budget_used(source=sync.TUNER)
            try:
                with BudgetProgress(self.budget_epochs, enabled=self.progress, initial=initial) as bar, \
                        summary_writer(self.study_dir / "tensorboard" / "tuner") as writer:
                    loop.run(executor, bar, writer)
            finally:
                executor.close()
                if storage_lock is not None:
                    storage_lock.close()
            return build_result(study, self.mode, self.monitor, self.study_dir)

    def _settings(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "monitor": self.monitor, "mode": self.mode,
                "max_epochs_per_trial": self.max_epochs_per_trial, "method": self.method.value, "seed": self.seed}

    def _new_optimizer(self) -> FMSOptimizer:
        kwargs = dict(self.optimizer_kwargs)
        kwargs.setdefault("surrogate_threads", self.surrogate_threads)
        if self.method.uses_weights:
            kwargs.setdefault("graph_fn", self.start_weights.graph)
            kwargs.setdefault("starting_weights_fn", self.start_weights)
        return FMSOptimizer(self.space, max_epochs=self.max_epochs_per_trial, method=self.method.value,
                            mode=self.mode, seed=self.seed, **kwargs)

    def _pretrain(self, opt: FMSOptimizer, study: Study) -> int:
        """Pretrain the surrogate on the runs ``WeightSnapshot`` recorded outside the tuner; how many."""
        runs = sync.recorded_runs(study, self.space, monitor=self.monitor, mode=self.mode,
                                  max_epochs=self.max_epochs_per_trial, method=self.method)
        if runs:
            opt.pretrain(runs)
            sync.log.info("Pretrained the surrogate on %d run(s) recorded in the study.", len(runs))
        return len(runs)


def _run_segment(runner: SegmentRunner, spec: SegmentSpec) -> SegmentResult:
    """A Ray task: one segment on a worker."""
    return runner.run(spec)
