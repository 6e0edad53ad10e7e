"""WeightSnapshot: record each validation epoch's metric and weights into a study.

After every ``every_n_epochs``-th validation epoch it records ``y_{i,j}`` (the
monitored metric, plus any other logged scalars) and ``W_{i,j}``, the weights
after epoch ``j``, as a safetensors snapshot. Before the first epoch of a fresh
trial it also stores ``W_{i,0}``, the starting weights. These rows are exactly
what the FMS surrogate learns from.

The weight copy to CPU is synchronous (so training can go on changing the
weights); the file write and the row insert happen on a background thread, in
that order, and are flushed at teardown.

Records go to a :class:`SnapshotSink`: by default the study's rows and files
(:class:`StudySink`); the tuner's workers pass one that writes files to a storage
and leaves the rows to the driver.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from fms_lightning._validate import check_mode
from fms_lightning.errors import ConfigurationError, MissingMetricError, StudyError, TrialFailedError
from fms_lightning.study import Study, TrialStatus

__all__ = ["WeightSnapshot", "SnapshotSink", "StudySink"]


class SnapshotSink:
    """Where :class:`WeightSnapshot` records go. Override every method.

    ``open`` and ``close`` run on rank zero at set-up and teardown; ``record`` runs on the
    callback's writer thread, one record at a time, in order.
    """

    def open(self) -> None:
        """Get ready to record (e.g. open the study)."""

    def new_trial(self, config: Mapping[str, Any], hub_entry: str | None, *, monitor: str, mode: str | None) -> int:
        """Create the trial a run without ``trial_id`` records into; returns its id."""
        raise NotImplementedError

    def needs_start_weights(self, trial_id: int) -> bool:
        """Whether ``W_{i,0}`` still has to be stored for the trial."""
        raise NotImplementedError

    def record(self, trial_id: int, epoch: int, value: float | None, metrics: dict[str, float], wall: float,
               weights: dict[str, torch.Tensor], *, fp16: bool, contiguous: bool) -> None:
        """Store ``W_{i,epoch}`` and, for ``epoch >= 1``, ``y_{i,epoch}`` (``value``) with the other metrics."""
        raise NotImplementedError

    def close(self, trial_id: int | None, *, interrupted: bool) -> None:
        """The run ended (``trial_id`` is None off rank zero)."""


class StudySink(SnapshotSink):
    """Records into a study: each snapshot file, then its row (the default sink).

    Args:
        study: A study folder (opened at set-up, closed at teardown, and the trial's
            status set then) or an open :class:`~fms_lightning.study.Study`.
    """

    def __init__(self, study: str | os.PathLike[str] | Study) -> None:
        self._study_arg = study
        self.study: Study | None = study if isinstance(study, Study) else None
        self._owns_study = False

    @override
    def open(self) -> None:
        if self.study is None:
            self.study = Study(Path(self._study_arg))  # type: ignore[arg-type]
            self._owns_study = True

    @override
    def new_trial(self, config: Mapping[str, Any], hub_entry: str | None, *, monitor: str, mode: str | None) -> int:
        assert self.study is not None
        trial_id = self.study.add_trial(config, hub_entry, source="callback", status=TrialStatus.RUNNING)
        self.study.set_run_settings(trial_id, monitor=monitor, mode=mode)
        return trial_id

    @override
    def needs_start_weights(self, trial_id: int) -> bool:
        assert self.study is not None
        return self.study.start_weights_path(trial_id) is None and self.study.last_epoch(trial_id) == 0

    @override
    def record(self, trial_id: int, epoch: int, value: float | None, metrics: dict[str, float], wall: float,
               weights: dict[str, torch.Tensor], *, fp16: bool, contiguous: bool) -> None:
        assert self.study is not None
        path = self.study.save_snapshot(trial_id, epoch, weights, fp16=fp16)
        if epoch > 0:
            assert value is not None
            self.study.add_observation(trial_id, epoch, value, metrics=metrics, snapshot=path, wall_time=wall,
                                       contiguous=contiguous)

    @override
    def close(self, trial_id: int | None, *, interrupted: bool) -> None:
        if not self._owns_study or self.study is None:
            return
        if trial_id is not None:
            with contextlib.suppress(StudyError):
                self.study.set_status(trial_id, TrialStatus.PAUSED if interrupted else TrialStatus.COMPLETED)
        self.study.close()
        self.study = None
        self._owns_study = False


class WeightSnapshot(Callback):
    """Snapshot weights and metrics into a study after validation epochs.

    Args:
        study: A study folder, an open :class:`~fms_lightning.study.Study`, or a
            :class:`SnapshotSink` that takes the records (the tuner's workers pass one).
        monitor: The logged metric that is the trial's objective, e.g. ``"val_acc"``.
        trial_id: Record into this existing trial. If ``None``, a new trial is
            created in ``setup`` with ``config`` and ``hub_entry``.
        config: The run's hyperparameters, stored with a new trial (standalone use).
            Keys outside a later tuner's search space are ignored by it.
        hub_entry: The hub model the run started from (its name or its ``HubEntry``), if any. A tuner
            learning from the run takes it as the config's hub dimension (e.g.
            ``model``), so ``config`` need not hold it.
        mode: ``"min"`` or ``"max"``: whether smaller or larger ``monitor`` values are
            better. Stored with the trial, for ``fms-lightning status`` and to check
            against a tuner's ``mode``.
        every_n_epochs: Record every n-th validation epoch (default 1).
        fp16: Store floating weights as float16 (halves disk use).
        save_start_weights: Store ``W_{i,0}`` before the first epoch of a trial
            that has none yet.

    Raises:
        ConfigurationError: For an empty ``monitor``, a bad ``mode`` or ``every_n_epochs < 1``; at
            the first validation epoch when ``monitor`` was not logged (the
            message lists what was logged).

    >>> cb = WeightSnapshot("runs/study", monitor="val_acc", mode="max",  # doctest: +SKIP
    ...                     config={"lr": 1e-3}, hub_entry="mlp-small")
    >>> pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        study: str | os.PathLike[str] | Study | SnapshotSink,
        *,
        monitor: str,
        trial_id: int | None = None,
        config: Mapping[str, Any] | None = None,
        hub_entry: str | Any = None,
        mode: str | None = None,
        every_n_epochs: int = 1,
        fp16: bool = False,
        save_start_weights: bool = True,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"monitor must name a logged metric such as 'val_acc', got {monitor!r}.")
        check_mode(mode, allow_none=True)
        if int(every_n_epochs) < 1:
            raise ConfigurationError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}.")
        if not isinstance(study, (Study, SnapshotSink, str, os.PathLike)):
            raise ConfigurationError(
                f"study must be a folder path, a Study or a SnapshotSink, got {type(study).__name__}."
            )
        self.monitor = monitor
        self.trial_id = trial_id
        self.config = dict(config or {})
        self.hub_entry = getattr(hub_entry, "name", hub_entry)  # a HubEntry or its name
        self.mode = mode
        self.every_n_epochs = int(every_n_epochs)
        self.fp16 = fp16
        self.save_start_weights = save_start_weights
        self.sink = study if isinstance(study, SnapshotSink) else StudySink(study)
        self.epochs_recorded = 0
        self.last_epoch = 0
        self._epoch_start = 0.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        self.sink.open()
        if self._worker is None:
            self._error = None
            self._worker = threading.Thread(target=self._drain, name="WeightSnapshot-writer", daemon=True)
            self._worker.start()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after a checkpoint was restored, so a resumed run keeps its trial.
        if trainer.is_global_zero and self.trial_id is None:
            config = self.config or dict(getattr(pl_module, "hparams", {}) or {})
            self.trial_id = self.sink.new_trial(config, self.hub_entry, monitor=self.monitor, mode=self.mode)
        trial_id = self.trial_id if trainer.is_global_zero else None
        # All ranks agree on the trial being recorded.
        self.trial_id = trainer.strategy.broadcast(trial_id, src=0)
        if not (self.save_start_weights and trainer.is_global_zero and trainer.current_epoch == 0):
            return
        assert self.trial_id is not None
        if self.sink.needs_start_weights(self.trial_id):
            self._enqueue(0, None, {}, 0.0, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    # ------------------------------------------------------------------ recording
    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1  # epochs trained so far, 1-based
        if epoch % self.every_n_epochs != 0 or epoch <= self.last_epoch:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_scalar(v)}
        if self.monitor not in metrics:
            raise MissingMetricError(
                f"WeightSnapshot could not find the monitored metric {self.monitor!r}. "
                f"Logged metrics are: {sorted(metrics) or 'none'}. Log it with self.log({self.monitor!r}, ...) "
                "in validation_step, or pass one of the logged names as monitor=."
            )
        if not math.isfinite(metrics[self.monitor]):
            raise TrialFailedError(f"the monitored metric {self.monitor!r} is {metrics[self.monitor]} at epoch {epoch}")
        self.last_epoch = epoch
        self.epochs_recorded += 1
        if trainer.is_global_zero:
            wall = time.perf_counter() - self._epoch_start if self._epoch_start else 0.0
            self._enqueue(epoch, metrics[self.monitor], metrics, wall, pl_module)

    def _enqueue(self, epoch: int, value: float | None, metrics: dict[str, float], wall: float,
                 pl_module: pl.LightningModule) -> None:
        self._raise_writer_error()
        # Synchronous, detached CPU copy: training may change the weights right after.
        weights = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        self._queue.put((epoch, value, metrics, wall, weights))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue  # keep draining so flush() returns; the error is re-raised there
                assert self.trial_id is not None
                self.sink.record(self.trial_id, *item, fp16=self.fp16, contiguous=self.every_n_epochs == 1)
            except BaseException as err:  # noqa: BLE001 - surfaced on the training thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise StudyError(f"WeightSnapshot failed to record a snapshot: {err}") from err

    def flush(self) -> None:
        """Block until every queued snapshot is on disk and recorded.

        Raises:
            StudyError: If the background writer failed.
        """
        if self._worker is not None:
            self._queue.join()
        self._raise_writer_error()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        try:
            self.flush()
        finally:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None
            self.sink.close(self.trial_id if trainer.is_global_zero else None, interrupted=trainer.interrupted)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "epochs_recorded": self.epochs_recorded, "last_epoch": self.last_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.trial_id is None:
            self.trial_id = state_dict.get("trial_id")
        self.epochs_recorded = int(state_dict.get("epochs_recorded", 0))
        self.last_epoch = int(state_dict.get("last_epoch", 0))


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float))

