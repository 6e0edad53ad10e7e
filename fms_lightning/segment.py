"""Trial segments: train one trial from its committed checkpoint up to a target epoch.

A segment is the unit of work the tuner hands to an executor, in this process or
on a Ray worker. :class:`SegmentRunner` holds everything a worker needs (``build``,
the data, the hub, the storage folder) and is pickled to the workers once.

A worker writes files only: the weight snapshots ``W_{i,j}`` and the segment's
final Lightning checkpoint, into the :class:`~fms_lightning.storage.Storage`. It
returns a :class:`SegmentResult` that names them, and the driver records the
segment in the study in one transaction (:meth:`Study.commit_segment`). Until
then nothing of the segment counts: a worker that dies, or a driver that is
killed, leaves at most orphaned files, which the segment's rerun overwrites.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from fms_lightning.callbacks.trial_guards import EpochSeeder, NonFiniteLossGuard
from fms_lightning.callbacks.weight_snapshot import WeightSnapshot
from fms_lightning.errors import ConfigurationError, MissingMetricError
from fms_lightning.hub import HubEntry, ModelHub
from fms_lightning.storage import Storage, clean_stale_scratch, scratch_prefix
from fms_lightning.study import snapshot_relpath, write_snapshot_file

__all__ = [
    "EpochRecord", "SegmentResult", "SegmentRunner", "SegmentSpec", "check_checkpoint_file", "datamodule_factory",
    "load_hub_weights",
]

BuildFn = Callable[[dict[str, Any], HubEntry | None], pl.LightningModule]
DataModuleLike = pl.LightningDataModule | Callable[[dict[str, Any]], pl.LightningDataModule]


def load_hub_weights(module: nn.Module, state: Mapping[str, torch.Tensor], *, entry: str = "") -> str:
    """Load a hub entry's weights into the submodule of ``module`` whose parameter names match.

    The hub model is usually an attribute of the LightningModule (``self.model``);
    the first submodule (in ``named_modules`` order, the module itself first)
    whose ``state_dict`` keys equal the hub file's keys receives them.

    Returns:
        The qualified name of the submodule that was loaded (``""`` for the root).

    Raises:
        ConfigurationError: If no submodule has exactly the hub file's keys.
    """
    keys = set(state)
    for name, sub in module.named_modules():
        if set(sub.state_dict()) == keys:
            sub.load_state_dict(dict(state))
            return name
    sample = sorted(keys)[:3]
    raise ConfigurationError(
        f"build() returned a {type(module).__name__} with no submodule whose parameters match hub entry "
        f"{entry!r} (keys such as {sample}). Make build(config, hub_entry) hold the model built by "
        "hub_entry.build(load_weights=False) as an attribute, e.g. self.model."
    )


class _DataModuleFromClass:
    """``config -> cls(**the config values that cls.__init__ names)``; picklable, for Ray workers."""

    def __init__(self, cls: type[pl.LightningDataModule]) -> None:
        import inspect

        self.cls = cls
        params = inspect.signature(cls.__init__).parameters
        self.names = tuple(n for n, p in params.items() if n != "self"
                           and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def __call__(self, config: Mapping[str, Any]) -> pl.LightningDataModule:
        return self.cls(**{k: v for k, v in config.items() if k in self.names})

    def __repr__(self) -> str:
        return f"{self.cls.__name__}(<config values for {', '.join(self.names) or 'no parameters'}>)"


def datamodule_factory(obj: Any) -> pl.LightningDataModule | Callable[[dict[str, Any]], pl.LightningDataModule]:
    """What the tuner calls to get a trial's data: a LightningDataModule, or ``config -> LightningDataModule``.

    A LightningDataModule *class* is instantiated per trial with the config's values
    for the parameters its ``__init__`` names (so ``batch_size`` in the search space
    reaches it); its other parameters keep their defaults.

    Raises:
        ConfigurationError: If ``obj`` is neither a LightningDataModule, nor its class, nor callable.
    """
    if isinstance(obj, type) and issubclass(obj, pl.LightningDataModule):
        return _DataModuleFromClass(obj)
    if isinstance(obj, pl.LightningDataModule) or (callable(obj) and not isinstance(obj, type)):
        return obj
    raise ConfigurationError(
        f"datamodule must be a LightningDataModule, a LightningDataModule class, or a callable "
        f"config -> LightningDataModule; got {obj!r}."
    )


class BuildError(ConfigurationError):
    """build() broke its contract: no trial can succeed, so the study stops."""


#: Errors that end a study instead of failing one trial: every trial would hit them.
FATAL_ERRORS = (BuildError, MissingMetricError)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run chatter (its INFO logs and advisory warnings)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec|ckpt_path).*")
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


@dataclass(frozen=True)
class SegmentSpec:
    """Train study trial ``study_trial`` from ``checkpoint`` (epoch ``start_epoch``) to ``target``.

    ``checkpoint`` is a path in the storage, ``None`` for a trial's first segment.
    """

    study_trial: int
    opt_trial: int
    config: dict[str, Any]
    start_epoch: int
    target: int
    checkpoint: str | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One trained epoch: ``y_{i,epoch}``, the other logged scalars, and the file of ``W_{i,epoch}``."""

    epoch: int
    value: float
    metrics: dict[str, float]
    snapshot: str
    wall_time: float

    def as_row(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "value": self.value, "metrics": self.metrics, "snapshot": self.snapshot,
                "wall_time": self.wall_time}


@dataclass(frozen=True)
class SegmentResult:
    """What a segment produced; nothing is in the study until the driver commits it.

    Attributes:
        spec: The segment.
        records: The epochs trained, in order (also those before a failure).
        start_snapshot: The file of ``W_{i,0}`` when the segment started the trial.
        checkpoint: The checkpoint after ``spec.target`` (``None`` if the segment failed).
        error: Why the trial failed (``"TypeName: message"``), or ``None``.
        worker: ``host:pid`` of the process that trained it.
        started: Wall-clock start (``time.time()``).
        seconds: How long it took.
        traceback: The failure's formatted traceback, or ``None``.
    """

    spec: SegmentSpec
    records: tuple[EpochRecord, ...]
    start_snapshot: str | None
    checkpoint: str | None
    error: str | None
    worker: str
    started: float
    seconds: float = field(default=0.0)
    traceback: str | None = None


class _FileRecorder(WeightSnapshot):
    """``WeightSnapshot`` for workers: writes snapshot files to the storage, keeps the rows in memory."""

    def __init__(self, storage: Storage, *, trial_id: int, monitor: str, save_start_weights: bool) -> None:
        super().__init__(storage.root, monitor=monitor, trial_id=trial_id, save_start_weights=save_start_weights)
        self.storage = storage
        self.records: list[EpochRecord] = []
        self.start_snapshot: str | None = None

    @override
    def _open(self) -> None:
        return None  # no study on a worker

    @override
    def _resolve_trial(self, pl_module: pl.LightningModule) -> int:
        assert self.trial_id is not None
        return self.trial_id

    @override
    def _needs_start_weights(self) -> bool:
        return self.save_start_weights

    @override
    def _write(self, epoch: int, value: float | None, metrics: dict[str, float], wall: float,
               weights: dict[str, torch.Tensor]) -> None:
        assert self.trial_id is not None
        rel = self.storage.write(snapshot_relpath(self.trial_id, epoch),
                                 lambda tmp: write_snapshot_file(weights, tmp, fp16=self.fp16))
        if epoch == 0:
            self.start_snapshot = rel
        else:
            assert value is not None
            self.records.append(EpochRecord(epoch, value, metrics, rel, wall))


class _TrialLogs(Callback):
    """A trial's TensorBoard extras: its config in the HParams plugin, and its metrics by epoch.

    Lightning logs a trial's metrics by global step, which differs between trials
    with different batch sizes; ``by_epoch/<metric>`` has the epoch as its step, so
    trials line up.
    """

    def __init__(self, config: Mapping[str, Any], monitor: str, first_segment: bool) -> None:
        self.config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
        self.monitor = monitor
        self.first_segment = first_segment

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if logger is None or not trainer.is_global_zero:
            return
        logger.log_hyperparams(self.config)  # hparams.yaml
        if self.first_segment and hasattr(logger, "experiment"):
            with contextlib.suppress(Exception):  # the HParams plugin's table (TensorBoard only)
                from torch.utils.tensorboard.summary import hparams

                writer = logger.experiment._get_file_writer()
                for summary in hparams(self.config, {f"by_epoch/{self.monitor}": 0.0}):
                    writer.add_summary(summary)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.logger is None or not trainer.is_global_zero:
            return
        metrics = {f"by_epoch/{k}": float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        if metrics:
            trainer.logger.log_metrics(metrics, step=trainer.current_epoch + 1)


def check_checkpoint_file(path: str | os.PathLike[str], name: str) -> str | None:
    """Why the Lightning checkpoint at ``path`` cannot be resumed from, or ``None`` if it looks whole.

    A checkpoint is a zip archive (``torch.save``); its directory and every member's
    CRC are checked, which reads the file once and unpickles nothing.

    Args:
        path: The local file.
        name: How the message names it (its place in the storage).
    """
    import zipfile

    what = None
    try:
        if not os.path.isfile(path):
            what = "missing"
        else:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                what = f"corrupt (member {bad!r} fails its CRC check)"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        what = f"truncated or not a checkpoint ({err})"
    if what is None:
        return None
    return (f"StudyError: the trial's committed checkpoint {name!r} is {what}, so the trial cannot resume from it; "
            "its recorded epochs are kept. Restore the file from a backup to resume the trial.")


def checkpoint_relpath(study_trial: int, epoch: int) -> str:
    """Where a trial's Lightning checkpoint after ``epoch`` lives in the storage."""
    return f"checkpoints/trial_{int(study_trial):05d}/epoch_{int(epoch):04d}.ckpt"


@dataclass
class SegmentRunner:
    """Everything needed to train a segment, in this process or on a worker.

    Args mirror :class:`~fms_lightning.tuner.FMSTuner`'s; ``hub_name`` is the
    search space's hub dimension and ``threads`` the torch threads to use (``None``
    leaves the process's setting).
    """

    build: BuildFn
    datamodule: DataModuleLike
    hub: ModelHub | None
    hub_name: str | None
    monitor: str
    seed: int
    max_epochs_per_trial: int
    storage: Storage
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    def entry(self, config: Mapping[str, Any]) -> HubEntry | None:
        if self.hub_name is None or self.hub is None:
            return None
        return self.hub.get(config[self.hub_name])

    def make_module(self, config: dict[str, Any], *, load_weights: bool) -> pl.LightningModule:
        """``build(config, hub_entry)``, with the hub weights loaded when ``load_weights``.

        Raises:
            BuildError: If ``build`` does not return a LightningModule, or its
                model cannot take the hub entry's weights.
        """
        entry = self.entry(config)
        try:
            module = self.build(dict(config), entry)
        except (KeyboardInterrupt, BuildError):
            raise
        except Exception as err:  # noqa: BLE001 - the user's build() broke: every trial would hit it
            raise BuildError(f"build(config, hub_entry) raised {type(err).__name__}: {err} (config {dict(config)}); "
                             "it must take (config, hub_entry) and return a LightningModule.") from err
        if not isinstance(module, pl.LightningModule):
            raise BuildError(f"build(config, hub_entry) must return a LightningModule, got {type(module).__name__}.")
        if hasattr(module, "total_epochs") and hasattr(module, "schedule_horizon"):
            module.total_epochs = self.max_epochs_per_trial  # NAdamWListModule: the whole trial is the horizon
            module.total_steps = None
        if load_weights and entry is not None and entry.weights is not None:
            try:
                load_hub_weights(module, entry.state_dict(), entry=entry.name)
            except ConfigurationError as err:
                raise BuildError(str(err)) from err
        return module

    def make_datamodule(self, config: dict[str, Any]) -> pl.LightningDataModule:
        if isinstance(self.datamodule, pl.LightningDataModule):
            return self.datamodule
        dm = self.datamodule(dict(config))
        if not isinstance(dm, pl.LightningDataModule):
            raise ConfigurationError(f"datamodule(config) must return a LightningDataModule, got {type(dm).__name__}.")
        return dm

    def run(self, spec: SegmentSpec) -> SegmentResult:
        """Train ``spec`` and write its files; a trial's failure is returned, not raised.

        Raises:
            BuildError, MissingMetricError: Errors every trial would hit (see ``FATAL_ERRORS``).
            KeyboardInterrupt: If training was interrupted.
        """
        started, t0 = time.time(), time.perf_counter()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        clean_stale_scratch()  # folders that killed runs left behind on this machine
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("fms-segment")) as scratch:
            ckpt = None
            if spec.checkpoint:
                name = self.storage.uri(spec.checkpoint)
                try:
                    ckpt = str(self.storage.fetch(spec.checkpoint, scratch))
                except OSError as err:
                    bad = f"StudyError: the trial's committed checkpoint {name!r} cannot be read ({err})"
                else:
                    bad = check_checkpoint_file(ckpt, name)
                if bad is not None:
                    return SegmentResult(spec, (), None, None, bad, f"{socket.gethostname()}:{os.getpid()}", started,
                                         time.perf_counter() - t0)
            # Seeded exactly as the tuner's W_{i,0}, so parameters the hub does not cover
            # start from the values the optimizer was told.
            torch.manual_seed(self.seed)
            module = self.make_module(spec.config, load_weights=ckpt is None)
            recorder = _FileRecorder(self.storage, trial_id=spec.study_trial, monitor=self.monitor,
                                     save_start_weights=spec.start_epoch == 0)
            trainer, error, trace = None, None, None
            try:
                trainer = self._trainer(spec, recorder)
                with quiet_lightning():
                    trainer.fit(module, datamodule=self.make_datamodule(spec.config), ckpt_path=ckpt, weights_only=True)
                recorder.flush()  # a failed snapshot write fails the trial
            except FATAL_ERRORS:
                raise
            except Exception as err:  # noqa: BLE001 - one trial's failure is reported, not raised
                error = f"{type(err).__name__}: {err}"
                trace = traceback.format_exc()
            finally:
                if trainer is not None:  # stop the writer thread; the files written so far are kept
                    with contextlib.suppress(Exception):
                        recorder.teardown(trainer, module, "fit")
            checkpoint = None
            if error is None:  # then the trainer was built and fit returned
                assert trainer is not None
                if trainer.interrupted:  # Ctrl-C (an exception also sets it, hence only here)
                    raise KeyboardInterrupt
                if trainer.current_epoch < spec.target:
                    error = (f"TrialFailedError: training stopped at epoch {trainer.current_epoch} "
                             f"before epoch {spec.target}")
            if error is None:
                checkpoint = self.storage.write(checkpoint_relpath(spec.study_trial, spec.target),
                                                lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        return SegmentResult(spec, tuple(recorder.records), recorder.start_snapshot, checkpoint, error,
                             f"{socket.gethostname()}:{os.getpid()}", started, time.perf_counter() - t0, trace)

    def _trainer(self, spec: SegmentSpec, recorder: _FileRecorder) -> pl.Trainer:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(self.storage.uri("tensorboard"), name="trials",
                                   version=f"trial_{spec.study_trial:05d}", default_hp_metric=False)
        kwargs = {
            "accelerator": "cpu", "logger": logger, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False, "num_sanity_val_steps": 0, "deterministic": True, "log_every_n_steps": 1,
        } | self.trainer_kwargs
        kwargs["callbacks"] = [
            recorder, EpochSeeder(self.seed, f"trial-{spec.study_trial}", first_epoch=spec.start_epoch),
            _TrialLogs(spec.config, self.monitor, spec.start_epoch == 0),
            NonFiniteLossGuard(), *kwargs.get("callbacks", []),
        ]
        kwargs["max_epochs"] = spec.target
        with quiet_lightning():
            return pl.Trainer(**kwargs)
