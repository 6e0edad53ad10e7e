"""Trial segments: train one trial from its committed checkpoint up to a target epoch.

A segment is the unit of work the tuner hands to an executor, in this process or
on a Ray worker. :class:`SegmentRunner` holds everything a worker needs (``build``,
the data, the hub, the storage folder) and is pickled to the workers once.

A worker writes files only: the weight snapshots ``W_{i,j}`` (through a
:class:`~fms_lightning.callbacks.WeightSnapshot` whose sink is the storage) and the
segment's final Lightning checkpoint, into the :class:`~fms_lightning.storage.Storage`. It
returns a :class:`SegmentResult` that names them, and the driver records the
segment in the study in one transaction (:meth:`Study.commit_segment`). Until
then nothing of the segment counts: a worker that dies, or a driver that is
killed, leaves at most orphaned files, which the segment's rerun overwrites.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from fms_lightning._files import check_checkpoint_file, checkpoint_relpath, snapshot_relpath, write_snapshot_file
from fms_lightning._trainer import trial_trainer_kwargs
from fms_lightning.callbacks.trial_guards import EpochSeeder, NonFiniteLossGuard
from fms_lightning.callbacks.weight_snapshot import SnapshotSink, WeightSnapshot
from fms_lightning.errors import BuildError, ConfigurationError, MissingMetricError
from fms_lightning.hub import HubEntry, ModelHub
from fms_lightning.tuner._lightning import (
    _TrialLogs, datamodule_factory, load_hub_weights, quiet_lightning,
)
from fms_lightning.storage import Storage, clean_stale_scratch, scratch_prefix

__all__ = [
    "BuildError", "EpochRecord", "SegmentResult", "SegmentRunner", "SegmentSpec", "StartWeights", "StorageSink",
    "check_checkpoint_file", "checkpoint_relpath", "datamodule_factory", "load_hub_weights", "quiet_lightning",
]

BuildFn = Callable[[dict[str, Any], HubEntry | None], pl.LightningModule]
DataModuleLike = pl.LightningDataModule | Callable[[dict[str, Any]], pl.LightningDataModule]


#: Errors that end a study instead of failing one trial: every trial would hit them.
FATAL_ERRORS = (BuildError, MissingMetricError)

#: Checkpoints this process wrote into a local storage folder, by path: the file's
#: ``(size, mtime_ns, inode)`` right after it was written. A segment that resumes from such a
#: file, unchanged since, skips the CRC check (torch.load checks none: the check is what finds
#: a damaged file, and a file this process just wrote and nobody touched since is whole).
_WRITTEN: dict[str, tuple[int, int, int]] = {}
_WRITTEN_MAX = 1024
#: Temporary folders already cleaned of killed runs' leftovers by this process.
_CLEANED: set[str] = set()


def _file_id(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _remember_written(path: str | os.PathLike[str]) -> None:
    ident = _file_id(path)
    if ident is not None:
        _WRITTEN[str(path)] = ident
        while len(_WRITTEN) > _WRITTEN_MAX:
            del _WRITTEN[next(iter(_WRITTEN))]


def _written_unchanged(path: str | os.PathLike[str]) -> bool:
    """Whether this process wrote the file at ``path`` and it is unchanged since (forgets it)."""
    ident = _WRITTEN.pop(str(path), None)
    return ident is not None and ident == _file_id(path)


def _clean_scratch_once() -> None:
    """:func:`clean_stale_scratch` of the temporary folder, once per process (the tuner cleans at each start)."""
    folder = tempfile.gettempdir()
    if folder not in _CLEANED:
        clean_stale_scratch()
        _CLEANED.add(folder)


@dataclass(frozen=True)
class SegmentSpec:
    """Train trial ``trial_id`` from ``checkpoint`` (epoch ``start_epoch``) to ``target``.

    ``checkpoint`` is a path in the storage, ``None`` for a trial's first segment.
    """

    trial_id: int
    config: dict[str, Any]
    start_epoch: int
    target: int
    checkpoint: str | None = None

    @property
    def study_trial(self) -> int:
        """Deprecated name of :attr:`trial_id` (a trial has one id)."""
        return self.trial_id


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


class StorageSink(SnapshotSink):
    """A worker's :class:`SnapshotSink`: snapshot files go to the storage, the rows stay in memory for the driver."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.records: list[EpochRecord] = []
        self.start_snapshot: str | None = None

    @override
    def needs_start_weights(self, trial_id: int) -> bool:
        return True  # asked only when the segment starts the trial

    @override
    def record(self, trial_id: int, epoch: int, value: float | None, metrics: dict[str, float], wall: float,
               weights: dict[str, torch.Tensor], *, fp16: bool, contiguous: bool) -> None:
        rel = self.storage.write(snapshot_relpath(trial_id, epoch), lambda tmp: write_snapshot_file(weights, tmp, fp16=fp16))
        if epoch == 0:
            self.start_snapshot = rel
        else:
            assert value is not None
            self.records.append(EpochRecord(epoch, value, metrics, rel, wall))


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
        from fms_lightning.optim.module import NAdamWListModule

        if isinstance(module, NAdamWListModule):  # the whole trial is the schedule's horizon
            module.total_epochs = self.max_epochs_per_trial
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
        _clean_scratch_once()  # folders that killed runs left behind on this machine
        # A scratch folder only for a checkpoint fetched from a remote storage.
        scratch_dir = tempfile.TemporaryDirectory(prefix=scratch_prefix("fms-segment")) if self.storage.is_url \
            else contextlib.nullcontext(None)
        with scratch_dir as scratch:
            ckpt = None
            if spec.checkpoint:
                name = self.storage.uri(spec.checkpoint)
                try:
                    ckpt = str(self.storage.fetch(spec.checkpoint, scratch))
                except OSError as err:
                    bad = f"StudyError: the trial's committed checkpoint {name!r} cannot be read ({err})"
                else:
                    bad = None if _written_unchanged(ckpt) else check_checkpoint_file(ckpt, name)
                if bad is not None:
                    return SegmentResult(spec, (), None, None, bad, f"{socket.gethostname()}:{os.getpid()}", started,
                                         time.perf_counter() - t0)
            # Seeded exactly as the tuner's W_{i,0}, so parameters the hub does not cover
            # start from the values the optimizer was told.
            torch.manual_seed(self.seed)
            module = self.make_module(spec.config, load_weights=ckpt is None)
            sink = StorageSink(self.storage)
            recorder = WeightSnapshot(sink, monitor=self.monitor, trial_id=spec.trial_id,
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
                checkpoint = self.storage.write(checkpoint_relpath(spec.trial_id, spec.target),
                                                lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
                local = self.storage.local_path(checkpoint)
                if local is not None:
                    _remember_written(local)
        return SegmentResult(spec, tuple(sink.records), sink.start_snapshot, checkpoint, error,
                             f"{socket.gethostname()}:{os.getpid()}", started, time.perf_counter() - t0, trace)

    def _trainer(self, spec: SegmentSpec, recorder: WeightSnapshot) -> pl.Trainer:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(self.storage.uri("tensorboard"), name="trials",
                                   version=f"trial_{spec.trial_id:05d}", default_hp_metric=False)
        kwargs = trial_trainer_kwargs(self.trainer_kwargs, logger=logger, log_every_n_steps=1, before=[
            recorder, EpochSeeder(self.seed, f"trial-{spec.trial_id}", first_epoch=spec.start_epoch),
            _TrialLogs(spec.config, self.monitor, spec.start_epoch == 0), NonFiniteLossGuard(),
        ])
        kwargs["max_epochs"] = spec.target
        with quiet_lightning():
            return pl.Trainer(**kwargs)


class StartWeights:
    """A config's module as the optimizer sees it: ``W_{i,0}`` and the parameter graph ``G(W)``.

    ``W_{i,0}`` is the module ``build`` returns with its hub weights, seeded exactly as a
    segment builds it (:meth:`SegmentRunner.run`), so parameters the hub does not cover
    start from the values the optimizer is told. The architecture depends on the hub
    entry only: one module per entry is built, and its weights are cached.

    Args:
        runner: Builds the modules.
    """

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self.cache: dict[str, dict[str, torch.Tensor]] = {}
        self._modules: dict[str, pl.LightningModule] = {}

    def _key(self, config: Mapping[str, Any]) -> str:
        entry = self.runner.entry(config)
        return entry.name if entry is not None else "__fresh__"

    def __call__(self, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``W_{i,0}`` of a new config (the optimizer's ``starting_weights_fn``)."""
        key = self._key(config)
        if key not in self.cache:
            torch.manual_seed(self.runner.seed)
            module = self.runner.make_module(config, load_weights=True)
            self.cache[key] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self._modules.setdefault(key, module)  # same architecture: graph() need not build it again
        return self.cache[key]

    def graph(self, config: dict[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Any:
        """``G(W)`` of the config's module with weights ``state_dict`` (the optimizer's ``graph_fn``).

        A LightningModule's ``example_input_array`` (if set) is passed along so shapes can
        be propagated (needed e.g. for DeepSets pooling).
        """
        from fms_lightning.weightspace import parameter_graph

        key = self._key(config)
        module = self._modules.get(key)
        if module is None:
            module = self._modules[key] = self.runner.make_module(config, load_weights=False)
        example = getattr(module, "example_input_array", None)
        return parameter_graph(module, state_dict, example_input=example)
