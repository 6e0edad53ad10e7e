"""The study store: trials, per-epoch observations, weight snapshots and tuner state.

A study is a folder::

    STUDY_DIR/
      study.sqlite            trials, observations, tuner state (SQLite, WAL mode)
      .lock                   single-writer lock (flock), holds the writer's pid
      snapshots/trial_00001/epoch_0000.safetensors   W_{i,0}: the starting weights
      snapshots/trial_00001/epoch_0003.safetensors   W_{i,3}: weights after epoch 3
      checkpoints/...         Lightning checkpoints (written by the tuner or its workers;
                              the ``checkpoints`` table names each trial's committed one)

Durability: files are written to a temporary name, fsynced and renamed into
place; rows are written in transactions, and a row that names a file is only
inserted after the file is durable. A kill at any instant therefore leaves a
consistent study: at worst an orphaned snapshot file that no row names, which a
rerun overwrites.

Only one process may write a study at a time (:class:`StudyLockedError`
otherwise); any number may read it with ``Study(path, readonly=True)``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fms_lightning._files import (  # noqa: F401 - the file helpers once lived here
    atomic_write, check_safetensors_file, load_weights_file, snapshot_relpath, write_snapshot_file,
)
from fms_lightning._study_store import _json_default, _StudyStore
from fms_lightning._validate import check_mode
from fms_lightning.errors import ConfigurationError, StudyError
from fms_lightning.trial import TrialStatus

__all__ = [
    "Study", "TrialStatus", "TrialRecord", "Observation", "atomic_write", "check_safetensors_file", "load_weights_file",
]


@dataclass(frozen=True)
class TrialRecord:
    """A trial as stored."""

    trial_id: int
    config: dict[str, Any]
    hub_entry: str | None
    status: TrialStatus
    reason: str | None
    source: str
    created: float
    updated: float

    @property
    def opt_trial_id(self) -> int | None:
        """Deprecated: the trial's id if the tuner ran it (``source == "tuner"``), else None.

        A trial has one id since schema version 3; test ``source == "tuner"`` instead.
        """
        return self.trial_id if self.source == "tuner" else None


@dataclass(frozen=True)
class Observation:
    """The metrics of trial ``trial_id`` after ``epoch`` epochs (1-based), and ``W_{i,epoch}``."""

    trial_id: int
    epoch: int
    value: float
    metrics: dict[str, float] = field(default_factory=dict)
    snapshot: str | None = None
    wall_time: float = 0.0
    created: float = 0.0


class Study(_StudyStore):
    """A study folder: SQLite rows plus snapshot files.

    Args:
        path: The study folder; created if missing (unless ``readonly``).
        readonly: Open for reading only; takes no lock.
        lock: Take the single-writer lock (default True for writers).

    Raises:
        StudyLockedError: If another live process is writing this study.
        StudyError: If ``readonly`` and there is no study at ``path``; if ``path``
            is a file, or a folder that cannot be read or written; or if
            ``study.sqlite`` is corrupt or not a study database (one line that
            names the file and what to do).

    >>> import tempfile
    >>> with Study(tempfile.mkdtemp()) as study:
    ...     tid = study.add_trial({"lr": 0.01})
    ...     _ = study.add_observation(tid, 1, 0.5, metrics={"val_acc": 0.5})
    ...     [o.value for o in study.observations(tid)]
    [0.5]
    """

    # -------------------------------------------------------------------- trials
    def add_trial(
        self, config: Mapping[str, Any], hub_entry: str | None = None, *, source: str = "user",
        status: TrialStatus | str = TrialStatus.PENDING, trial_id: int | None = None,
        opt_trial_id: int | None = None,
    ) -> int:
        """Record a new trial and return its id (1, 2, ...).

        Args:
            config: The trial's hyperparameters (JSON-serialisable).
            hub_entry: The hub model it starts from.
            source: Who created it (``"tuner"``, ``"callback"``, ``"user"``, ...).
            status: Its initial status.
            trial_id: The id to give it (default: one past the largest). Adding a trial
                whose id exists with the same config and source returns that id (so a
                writer that crashed right after adding it can safely add it again).
            opt_trial_id: Deprecated (one id since schema version 3): any value means
                ``source="tuner"``.

        Raises:
            StudyError: If ``trial_id`` is taken by another trial.
        """
        if opt_trial_id is not None:
            source = "tuner"
        now = time.time()
        blob = json.dumps(dict(config), sort_keys=True, default=_json_default)
        with self._transaction() as cur:
            if trial_id is not None:
                row = cur.execute("SELECT config, source FROM trials WHERE trial_id = ?", (int(trial_id),)).fetchone()
                if row is not None and (row[0], row[1]) == (blob, source):
                    return int(trial_id)
                if row is not None:
                    raise StudyError(f"Trial {trial_id} of the study at {str(self.path)!r} exists with another "
                                     f"config or source; add the trial without an id, or with {self.next_trial_id()}.")
            cur.execute(
                "INSERT INTO trials(trial_id, config, hub_entry, status, reason, source, created, updated) "
                "VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
                (None if trial_id is None else int(trial_id), blob, hub_entry, TrialStatus(status).value, source,
                 now, now),
            )
            return int(cur.lastrowid)

    def next_trial_id(self) -> int:
        """The id :meth:`add_trial` gives the next trial when none is named."""
        return int(self._query("SELECT COALESCE(MAX(trial_id), 0) + 1 FROM trials")[0][0])

    def set_status(self, trial_id: int, status: TrialStatus | str, reason: str | None = None) -> None:
        """Change a trial's status; a failure should carry its ``reason``."""
        status = TrialStatus(status)
        with self._transaction() as cur:
            cur.execute(
                "UPDATE trials SET status = ?, reason = ?, updated = ? WHERE trial_id = ?",
                (status.value, reason, time.time(), int(trial_id)),
            )
            if cur.rowcount != 1:
                raise StudyError(f"No trial {trial_id} in the study at {str(self.path)!r}.")

    def trial(self, trial_id: int) -> TrialRecord:
        """One trial.

        Raises:
            StudyError: If there is no such trial.
        """
        rows = self._query("SELECT * FROM trials WHERE trial_id = ?", (int(trial_id),))
        if not rows:
            raise StudyError(f"No trial {trial_id} in the study at {str(self.path)!r}.")
        return self._trial(rows[0])

    def trials(self, status: TrialStatus | str | None = None, *, source: str | None = None) -> list[TrialRecord]:
        """All trials in id order, optionally only those with ``status`` and those from ``source``."""
        if status is None:
            rows = self._query("SELECT * FROM trials ORDER BY trial_id")
        else:
            rows = self._query("SELECT * FROM trials WHERE status = ? ORDER BY trial_id", (TrialStatus(status).value,))
        found = [self._trial(r) for r in rows]
        return found if source is None else [t for t in found if t.source == source]

    def _trial(self, row: sqlite3.Row) -> TrialRecord:
        source = row["source"]
        if self._old_ids and source == "tuner" and row["opt_trial_id"] is None:
            source = "user"  # before schema 3, add_trial's default source was "tuner"
        return TrialRecord(
            int(row["trial_id"]), json.loads(row["config"]), row["hub_entry"], TrialStatus(row["status"]),
            row["reason"], source, float(row["created"]), float(row["updated"]),
        )

    # -------------------------------------------------------------- observations
    def add_observation(
        self, trial_id: int, epoch: int, value: float, *, metrics: Mapping[str, float] | None = None,
        snapshot: str | None = None, wall_time: float = 0.0, contiguous: bool = True,
    ) -> Observation:
        """Record ``y_{i,epoch}``.

        Epochs of a trial must be contiguous from 1 (with ``contiguous=False``,
        only increasing: for runs recorded every n-th epoch). Re-recording the
        latest epoch (a rerun after a crash between training and bookkeeping)
        replaces it.

        Raises:
            StudyError: For a gap in the epochs, a non-finite value or an unknown trial.
        """
        with self._transaction() as cur:
            return self._insert_observation(cur, trial_id, epoch, value, metrics=metrics, snapshot=snapshot,
                                            wall_time=wall_time, contiguous=contiguous)

    def _insert_observation(
        self, cur: sqlite3.Cursor, trial_id: int, epoch: int, value: float, *,
        metrics: Mapping[str, float] | None = None, snapshot: str | None = None, wall_time: float = 0.0,
        contiguous: bool = True,
    ) -> Observation:
        epoch, value = int(epoch), float(value)
        if not math.isfinite(value):
            raise StudyError(f"Trial {trial_id} epoch {epoch}: the monitored value {value} is not finite.")
        clean = {k: float(v) for k, v in (metrics or {}).items()}
        now = time.time()
        if cur.execute("SELECT 1 FROM trials WHERE trial_id = ?", (int(trial_id),)).fetchone() is None:
            raise StudyError(f"No trial {trial_id} in the study at {str(self.path)!r}.")
        last = cur.execute("SELECT MAX(epoch) FROM observations WHERE trial_id = ?", (int(trial_id),)).fetchone()[0]
        last = int(last or 0)
        ok = epoch in (last, last + 1) if contiguous else epoch >= last
        if not ok or epoch < 1:
            expected = f"the next must be {last + 1}" if contiguous else f"epochs must increase from {last}"
            raise StudyError(
                f"Trial {trial_id}: cannot record epoch {epoch}; the last recorded epoch is {last}, so {expected}."
            )
        cur.execute(
            "INSERT OR REPLACE INTO observations(trial_id, epoch, value, metrics, snapshot, wall_time, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (int(trial_id), epoch, value, json.dumps(clean, sort_keys=True), snapshot, float(wall_time), now),
        )
        cur.execute("UPDATE trials SET updated = ? WHERE trial_id = ?", (now, int(trial_id)))
        return Observation(int(trial_id), epoch, value, clean, snapshot, float(wall_time), now)

    def observations(self, trial_id: int | None = None, *, order: str = "trial") -> list[Observation]:
        """Observations for one trial or all.

        Args:
            trial_id: Only this trial's (default: every trial's).
            order: ``"trial"``: in (trial, epoch) order; ``"commit"``: in the order they were
                recorded (a re-recorded epoch counts from its last recording).

        Raises:
            ConfigurationError: For another ``order``.
        """
        if order not in ("trial", "commit"):
            raise ConfigurationError(f"order must be 'trial' or 'commit', got {order!r}.")
        sql = "SELECT * FROM observations"
        args: tuple[Any, ...] = ()
        if trial_id is not None:
            sql, args = sql + " WHERE trial_id = ?", (int(trial_id),)
        rows = self._query(sql + (" ORDER BY trial_id, epoch" if order == "trial" else " ORDER BY rowid"), args)
        return [
            Observation(int(r["trial_id"]), int(r["epoch"]), float(r["value"]), json.loads(r["metrics"]),
                        r["snapshot"], float(r["wall_time"]), float(r["created"]))
            for r in rows
        ]

    def last_epoch(self, trial_id: int) -> int:
        """The number of epochs recorded for a trial (0 if none)."""
        row = self._query("SELECT MAX(epoch) FROM observations WHERE trial_id = ?", (int(trial_id),))
        return int(row[0][0] or 0)

    def budget_used(self, *, source: str | None = None, tuner_only: bool = False) -> int:
        """Epochs trained and recorded, over all trials or those from ``source``.

        ``tuner_only=True`` is the deprecated spelling of ``source="tuner"``.
        """
        source = "tuner" if tuner_only else source
        if source is None:
            return int(self._query("SELECT COUNT(*) FROM observations")[0][0])
        ids = {t.trial_id for t in self.trials(source=source)}
        counts = self._query("SELECT trial_id, COUNT(*) FROM observations GROUP BY trial_id")
        return sum(int(n) for tid, n in counts if int(tid) in ids)

    def best(self, mode: str = "max") -> Observation | None:
        """The best observation over all trials and epochs, or ``None``.

        Raises:
            ConfigurationError: If ``mode`` is not ``"min"`` or ``"max"``.
        """
        check_mode(mode)
        obs = self.observations()
        if not obs:
            return None
        return (max if mode == "max" else min)(obs, key=lambda o: o.value)

    def commit_segment(
        self, trial_id: int, observations: Sequence[Mapping[str, Any]], *, start_snapshot: str | None = None,
        checkpoint: tuple[int, str] | None = None,
    ) -> None:
        """Record a trained segment in one transaction: its rows and its checkpoint, or none of them.

        The snapshot files the rows name must already be durable.

        Args:
            trial_id: The trial.
            observations: Per epoch, in order: ``epoch``, ``value``, and optionally
                ``metrics``, ``snapshot`` and ``wall_time``.
            start_snapshot: The file of ``W_{trial,0}``, for a segment that started the trial.
            checkpoint: ``(epoch, path)`` of the Lightning checkpoint to resume from next.

        Raises:
            StudyError: For a gap in the epochs, a non-finite value or an unknown trial
                (and nothing is recorded).
        """
        with self._transaction() as cur:
            if start_snapshot is not None:
                cur.execute("INSERT OR REPLACE INTO start_weights(trial_id, snapshot) VALUES (?, ?)",
                            (int(trial_id), start_snapshot))
            for o in observations:
                self._insert_observation(cur, trial_id, o["epoch"], o["value"], metrics=o.get("metrics"),
                                         snapshot=o.get("snapshot"), wall_time=o.get("wall_time", 0.0))
            if checkpoint is not None:
                cur.execute("INSERT OR REPLACE INTO checkpoints(trial_id, epoch, path) VALUES (?, ?, ?)",
                            (int(trial_id), int(checkpoint[0]), str(checkpoint[1])))

    def checkpoint(self, trial_id: int) -> tuple[int, str] | None:
        """``(epoch, path)`` of the trial's committed checkpoint, or ``None``."""
        rows = self._query("SELECT epoch, path FROM checkpoints WHERE trial_id = ?", (int(trial_id),))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def set_run_settings(self, trial_id: int, *, monitor: str, mode: str | None = None) -> None:
        """Record what a run outside the tuner monitored (``WeightSnapshot`` does, for its trials)."""
        self.set_meta(f"run_settings/{int(trial_id):05d}", {"monitor": monitor, "mode": mode})

    def run_settings(self, trial_id: int) -> dict[str, Any]:
        """``{"monitor": ..., "mode": ...}`` of a recorded run (``{}`` if unknown, e.g. the tuner's trials)."""
        return dict(self.get_meta(f"run_settings/{int(trial_id):05d}", {}))

