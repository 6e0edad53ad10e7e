"""Moved to :mod:`fms_lightning.tuner.segment`; this alias keeps the old imports working."""

from __future__ import annotations

from fms_lightning._files import check_checkpoint_file, checkpoint_relpath
from fms_lightning.errors import BuildError
from fms_lightning.tuner._lightning import datamodule_factory, load_hub_weights, quiet_lightning
from fms_lightning.tuner.segment import (
    FATAL_ERRORS, BuildFn, DataModuleLike, EpochRecord, SegmentResult, SegmentRunner, SegmentSpec, StartWeights,
    StorageSink,
)

__all__ = [
    "FATAL_ERRORS", "BuildError", "BuildFn", "DataModuleLike", "EpochRecord", "SegmentResult", "SegmentRunner",
    "SegmentSpec", "StartWeights", "StorageSink", "check_checkpoint_file", "checkpoint_relpath", "datamodule_factory",
    "load_hub_weights", "quiet_lightning",
]
