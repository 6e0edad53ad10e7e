"""What a tuner does when it starts, or restarts, a study.

- It takes the study's own folder of a shared ``storage=`` (:func:`claim_storage`):
  ``STORAGE/<study_id>/``, the id made with the study and kept in its rows, so two
  studies on one storage never touch each other's files.
- It removes what a killed run left behind: checkpoint files that no committed
  row names (:func:`remove_superseded_checkpoints`).
- It checks the files the rows name (:func:`warn_damaged_snapshots`).

The optimizer is then rebuilt from the rows (``fms_lightning.tuner.sync``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from fms_lightning._files import check_safetensors_file, trial_checkpoint_folder
from fms_lightning.errors import StudyError, StudyLockedError
from fms_lightning.storage import Storage
from fms_lightning.study import Study

__all__ = ["claim_storage", "remove_superseded_checkpoints", "warn_damaged_snapshots"]

_TUNER = "tuner"  # the source of a tuner's trials (``fms_lightning.tuner.sync.TUNER``)

log = logging.getLogger(__name__)


def _new_study_id(study_dir: Path) -> str:
    """A fresh id for a study: its folder's name (for people) and random hex (for uniqueness)."""
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", study_dir.resolve().name)[:40].lstrip(".") or "study"
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def storage_prefix(study: Study, study_dir: Path) -> str:
    """The study's folder in a shared storage: its id, made with the study ("" for a study made before ids)."""
    study_id = study.get_meta("study_id")
    if study_id is None:
        study_id = _new_study_id(study_dir)
        if study.trials(source=_TUNER):  # its files are at the storage root
            study.set_meta("storage_prefix", "")
        study.set_meta("study_id", study_id)
    return str(study.get_meta("storage_prefix", study_id))


def claim_storage(base: Storage, study: Study, study_dir: Path) -> tuple[Storage, Any]:
    """The study's own folder of ``base``, and the lock held on it (``None`` when there is none).

    With the default storage (the study folder itself) nothing changes. Otherwise
    the study writes only under ``BASE/<study_id>/``. A local storage folder is
    also locked (until the returned file is closed), so two copies of one study
    folder cannot use it at once.

    Raises:
        StudyLockedError: If another process holds the lock of that folder.
    """
    prefix = storage_prefix(study, study_dir)
    if not base.is_url and Path(base.root) == study_dir.resolve():
        return base, None
    if not prefix:
        log.warning("The study at %s predates per-study storage folders: its files stay at the root of %s, so do "
                    "not share that storage with another study.", study_dir, base.root)
        return base, None
    storage = Storage(base.uri(prefix))
    local = storage.local_path(".lock")
    if local is None:
        return storage, None
    import fcntl

    local.parent.mkdir(parents=True, exist_ok=True)
    fh = open(local, "a+")  # noqa: SIM115 - held until the caller closes it
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StudyLockedError(
            f"The storage folder {str(local.parent)!r} is in use by another tuner whose study has the same id: a "
            "copy of this study folder? Give the copy its own storage, or wait for the other run to finish."
        ) from None
    return storage, fh


def remove_superseded_checkpoints(storage: Storage, study: Study) -> None:
    """Delete checkpoint files of the study's trials that no row names (left by a kill between two steps)."""
    for t in study.trials(source=_TUNER):
        folder = trial_checkpoint_folder(t.trial_id)
        committed = study.checkpoint(t.trial_id)
        try:
            files = storage.list(folder)
        except OSError:
            continue
        for rel in files:
            if committed is None or rel != committed[1]:
                with contextlib.suppress(OSError):
                    storage.delete(rel)


def warn_damaged_snapshots(study: Study) -> list[str]:
    """Warn about weight snapshots the rows name that are damaged (header and size checked); returns the reasons."""
    bad = []
    for o in study.observations():
        if o.snapshot:
            try:
                check_safetensors_file(study.path / o.snapshot)
            except StudyError as err:
                bad.append(str(err))
    if bad:
        warnings.warn(f"{len(bad)} weight snapshot(s) of the study are damaged; the rows are kept, but the surrogate "
                      f"cannot read these weights and export_best() refuses them. First: {bad[0]}", RuntimeWarning,
                      stacklevel=3)
    return bad
