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

import contextlib
import enum
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fms_lightning._files import (  # noqa: F401 - the file helpers once lived here
    atomic_write, check_safetensors_file, load_weights_file, snapshot_relpath, write_snapshot_file,
)
from fms_lightning._validate import check_mode
from fms_lightning.errors import StudyError, StudyLockedError
from fms_lightning.trial import TrialStatus

__all__ = [
    "Study", "TrialStatus", "TrialRecord", "Observation", "atomic_write", "check_safetensors_file", "load_weights_file",
]

_SCHEMA_VERSION = 3  # 2: the checkpoints table (segments are committed with their checkpoint); 3: one trial id
# Before version 3 a tuner's trial also had the optimizer's id, in a column ``opt_trial_id``; such
# files are still read (a trial with ``source = 'tuner'`` and no ``opt_trial_id`` was added by hand).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial_id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    hub_entry TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id),
    epoch INTEGER NOT NULL,
    value REAL NOT NULL,
    metrics TEXT NOT NULL,
    snapshot TEXT,
    wall_time REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (trial_id, epoch)
);
CREATE TABLE IF NOT EXISTS start_weights (trial_id INTEGER PRIMARY KEY REFERENCES trials(trial_id), snapshot TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (trial_id INTEGER PRIMARY KEY REFERENCES trials(trial_id), epoch INTEGER NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tuner_state (id INTEGER PRIMARY KEY CHECK (id = 0), state BLOB NOT NULL, updated REAL NOT NULL);
"""


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Study:
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

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, lock: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock_fh: Any = None
        self._conn: Any = None
        self._mutex = threading.RLock()
        self._tx: sqlite3.Cursor | None = None
        self._old_ids = False  # a file from before schema 3, with its ``opt_trial_id`` column
        db = self.path / "study.sqlite"
        try:
            if self.path.exists() and not self.path.is_dir():
                raise StudyError(f"The study folder {str(self.path)!r} is a file, not a folder; pass the path of "
                                 "a folder (it is created if missing).")
            if readonly:
                if not db.is_file():
                    raise StudyError(f"No study at {str(self.path)!r} (missing study.sqlite).")
                self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
                tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"meta", "trials", "observations"} <= tables:
                    raise StudyError(f"{str(db)!r} is not a study database: it has no study tables (an empty or "
                                     "foreign SQLite file, or a study whose tuner is creating it right now). Point "
                                     "at a study folder written by fms-lightning.")
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                if lock:
                    self._acquire_lock()
                self._conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.executescript(_SCHEMA)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
                )
        except sqlite3.DatabaseError as err:
            self._abandon()
            if isinstance(err, sqlite3.OperationalError) and "unable to open" in str(err):
                raise StudyError(f"Cannot open the study database {str(db)!r} ({err}); check that you may read "
                                 "and write the folder and the file, or use another study_dir.") from None
            raise StudyError(
                f"The study database {str(db)!r} is corrupt or not a study database ({err}). Move it (and any "
                "study.sqlite-wal / -shm next to it) aside to start a new study in this folder, or restore it "
                "from a backup."
            ) from None
        except OSError as err:
            self._abandon()
            raise StudyError(f"Cannot open the study at {str(self.path)!r}: {err.strerror or err}. Check that you "
                             "may read and write that folder, or use another study_dir.") from None
        except BaseException:
            self._abandon()
            raise
        self._conn.row_factory = sqlite3.Row
        self._old_ids = any(r[1] == "opt_trial_id" for r in self._conn.execute("PRAGMA table_info(trials)")) \
            and self.get_meta("one_trial_id") is None
        if self._old_ids and not readonly:
            self._migrate_to_one_id()

    def _migrate_to_one_id(self) -> None:
        """Schema 3: a trial added by hand to a study from before it gets ``source = 'user'``."""
        with self._transaction() as cur:
            cur.execute("UPDATE trials SET source = 'user' WHERE source = 'tuner' AND opt_trial_id IS NULL")
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('one_trial_id', 'true')")
        self._old_ids = False

    def _abandon(self) -> None:
        """Release what a failed ``__init__`` opened."""
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        if self._lock_fh is not None:
            with contextlib.suppress(Exception):
                self._lock_fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------ plumbing
    def _acquire_lock(self) -> None:
        import fcntl

        fh = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the study's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StudyLockedError(
                f"The study at {str(self.path)!r} is already in use by another process (pid {holder}). "
                "Wait for it to finish, stop it, or use a different study_dir; readers can open it with "
                "Study(path, readonly=True)."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        if self.readonly:
            raise StudyError(f"The study at {str(self.path)!r} was opened read-only.")
        with self._mutex:
            if self._tx is not None:  # inside atomic(): part of its transaction
                yield self._tx
                return
            cur = self._tx = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self._tx = None
                cur.execute("ROLLBACK")
                raise
            self._tx = None
            cur.execute("COMMIT")

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Make every write inside the block one transaction: all of them are recorded, or none.

        >>> import tempfile
        >>> with Study(tempfile.mkdtemp()) as study, study.atomic():
        ...     tid = study.add_trial({"lr": 0.01})
        ...     study.set_status(tid, "running")
        """
        with self._transaction():
            yield

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the database and release the writer lock.

        A writer leaves the file in rollback-journal mode, with the WAL folded in,
        so that a closed study is the one ``study.sqlite`` file (readers of a WAL
        file would otherwise leave ``-wal`` and ``-shm`` files behind). The next
        writer switches WAL on again. If a reader still has the study open, the
        switch is skipped.
        """
        with self._mutex:
            if self._conn is not None:
                if not self.readonly:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                        self._conn.execute("PRAGMA journal_mode=DELETE")
                self._conn.close()
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def observations(self, trial_id: int | None = None) -> list[Observation]:
        """Observations in (trial, epoch) order, for one trial or all."""
        sql = "SELECT * FROM observations"
        args: tuple[Any, ...] = ()
        if trial_id is not None:
            sql, args = sql + " WHERE trial_id = ?", (int(trial_id),)
        rows = self._query(sql + " ORDER BY trial_id, epoch", args)
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

    # ------------------------------------------------------------------ snapshots
    def snapshot_path(self, trial_id: int, epoch: int) -> str:
        """Where ``W_{trial,epoch}`` lives, relative to the study folder."""
        return snapshot_relpath(trial_id, epoch)

    def save_snapshot(
        self, trial_id: int, epoch: int, state_dict: Mapping[str, torch.Tensor], *, fp16: bool = False
    ) -> str:
        """Write ``W_{trial,epoch}`` atomically as safetensors; returns its relative path.

        ``epoch=0`` is the starting weights and is also recorded in the study.
        Floating tensors are stored in float16 when ``fp16``.
        """
        rel = self.snapshot_path(trial_id, epoch)
        atomic_write(self.path / rel, lambda tmp: write_snapshot_file(state_dict, tmp, fp16=fp16))
        if int(epoch) == 0:
            with self._transaction() as cur:
                cur.execute("INSERT OR REPLACE INTO start_weights(trial_id, snapshot) VALUES (?, ?)", (int(trial_id), rel))
        return rel

    def start_weights_path(self, trial_id: int) -> str | None:
        """The relative path of ``W_{trial,0}``, if it was recorded."""
        rows = self._query("SELECT snapshot FROM start_weights WHERE trial_id = ?", (int(trial_id),))
        return rows[0][0] if rows else None

    def load_snapshot(self, relpath: str) -> dict[str, torch.Tensor]:
        """Load a snapshot named by an observation (relative to the study folder)."""
        return load_weights_file(self.path / relpath)

    # --------------------------------------------------------------- tuner state
    def save_tuner_state(self, state: Mapping[str, Any]) -> None:
        """Store the optimizer's ``state_dict`` (tensors and plain values) in one transaction."""
        import io

        buf = io.BytesIO()
        torch.save(dict(state), buf)
        with self._transaction() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO tuner_state(id, state, updated) VALUES (0, ?, ?)", (buf.getvalue(), time.time())
            )

    def load_tuner_state(self) -> dict[str, Any] | None:
        """The stored optimizer state, loaded with ``weights_only=True``, or ``None``.

        Raises:
            StudyError: If the stored state is corrupt (or holds anything but
                tensors and plain values); the rows are untouched, and
                :meth:`FMSTuner.fit <fms_lightning.FMSTuner.fit>` rebuilds the state from them.
        """
        import io

        rows = self._query("SELECT state FROM tuner_state WHERE id = 0")
        if not rows:
            return None
        try:
            state = torch.load(io.BytesIO(rows[0][0]), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means a corrupt (or unsafe) blob
            detail = (str(err).strip().splitlines() or [""])[0]
            raise StudyError(
                f"The tuner state stored in {str(self.path / 'study.sqlite')!r} cannot be loaded "
                f"({type(err).__name__}: {detail}); it is refused. The study's rows are intact: "
                "FMSTuner.fit() rebuilds the tuner state from them."
            ) from None
        if not isinstance(state, dict):
            raise StudyError(
                f"The tuner state stored in {str(self.path / 'study.sqlite')!r} is a {type(state).__name__}, not "
                "a mapping; it is refused. FMSTuner.fit() rebuilds the tuner state from the study's rows."
            )
        return state

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (e.g. the tuner's settings, to check on resume)."""
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value, default=_json_default)))

    @property
    def schema_version(self) -> int:
        """The schema version the study was created with."""
        return int(self.get_meta("schema_version", _SCHEMA_VERSION))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_run_settings(self, trial_id: int, *, monitor: str, mode: str | None = None) -> None:
        """Record what a run outside the tuner monitored (``WeightSnapshot`` does, for its trials)."""
        self.set_meta(f"run_settings/{int(trial_id):05d}", {"monitor": monitor, "mode": mode})

    def run_settings(self, trial_id: int) -> dict[str, Any]:
        """``{"monitor": ..., "mode": ...}`` of a recorded run (``{}`` if unknown, e.g. the tuner's trials)."""
        return dict(self.get_meta(f"run_settings/{int(trial_id):05d}", {}))
