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

from fms_lightning.errors import ConfigurationError, StudyError, StudyLockedError

__all__ = [
    "Study", "TrialStatus", "TrialRecord", "Observation", "atomic_write", "check_safetensors_file", "load_weights_file",
]

_SCHEMA_VERSION = 2  # 2: the checkpoints table (segments are committed with their checkpoint)
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
    updated REAL NOT NULL,
    opt_trial_id INTEGER UNIQUE
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


class TrialStatus(str, enum.Enum):
    """Where a trial is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"


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
    opt_trial_id: int | None = None


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Write a file so that it is either absent or complete, even across a crash.

    Args:
        path: The final path.
        write: A callable that writes the whole file at the temporary path it is given.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def check_safetensors_file(path: str | os.PathLike[str]) -> None:
    """Check a safetensors file's header and size without reading its tensors.

    A file cut short (a kill during a copy, a full disk) or with bytes appended
    fails here, with a message that names it.

    Raises:
        StudyError: If the file is missing, or its header is malformed or does
            not account for exactly the file's size.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > size - 8 or n > 100_000_000:
                raise ValueError(f"the header length is {n} for a file of {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        raise StudyError(f"Weight file {str(path)!r} does not exist.") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise StudyError(f"Weight file {str(path)!r} is corrupt or not a safetensors file ({err}); restore it "
                         "from a backup or re-create it.") from None
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        what = "truncated" if size < expected else "longer than its header says"
        raise StudyError(f"Weight file {str(path)!r} is {what}: its header promises {expected} bytes, the file has "
                         f"{size}. Restore it from a backup or re-create it.")


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict safely: safetensors, or ``torch.load(weights_only=True)``.

    A safetensors file's header and size are checked first (:func:`check_safetensors_file`).

    Raises:
        StudyError: If the file is missing or cannot be read as weights.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"Weight file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            check_safetensors_file(path)
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except StudyError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        detail = (str(err).strip().splitlines() or [""])[0]
        raise StudyError(f"Weight file {str(path)!r} is corrupt or not a weights file: {detail}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudyError(f"Weight file {str(path)!r} does not hold a mapping of names to tensors.")
    return dict(state)


def snapshot_relpath(trial_id: int, epoch: int) -> str:
    """Where ``W_{trial,epoch}`` lives, relative to a study (or storage) folder."""
    return f"snapshots/trial_{int(trial_id):05d}/epoch_{int(epoch):04d}.safetensors"


def write_snapshot_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
                        fp16: bool = False) -> None:
    """Write a state_dict as safetensors at ``path`` (floating tensors as float16 when ``fp16``)."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state_dict.items():
        t = v.detach().to("cpu", copy=True).contiguous()
        tensors[k] = t.half() if fp16 and t.is_floating_point() else t
    save_file(tensors, str(path))


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
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

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
        self, config: Mapping[str, Any], hub_entry: str | None = None, *, source: str = "tuner",
        status: TrialStatus = TrialStatus.PENDING, opt_trial_id: int | None = None,
    ) -> int:
        """Record a new trial and return its id (1, 2, ...).

        Args:
            config: The trial's hyperparameters (JSON-serialisable).
            hub_entry: The hub model it starts from.
            source: Who created it (``"tuner"``, ``"callback"``, ...).
            status: Its initial status.
            opt_trial_id: The optimizer's id for the trial. Adding a trial with an
                ``opt_trial_id`` that exists returns the existing trial (so a
                tuner that crashed right after adding it can safely add it again).
        """
        now = time.time()
        blob = json.dumps(dict(config), sort_keys=True, default=_json_default)
        with self._transaction() as cur:
            if opt_trial_id is not None:
                row = cur.execute("SELECT trial_id FROM trials WHERE opt_trial_id = ?", (int(opt_trial_id),)).fetchone()
                if row is not None:
                    return int(row[0])
            cur.execute(
                "INSERT INTO trials(config, hub_entry, status, reason, source, created, updated, opt_trial_id) "
                "VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                (blob, hub_entry, TrialStatus(status).value, source, now, now,
                 None if opt_trial_id is None else int(opt_trial_id)),
            )
            return int(cur.lastrowid)

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

    def trials(self, status: TrialStatus | str | None = None) -> list[TrialRecord]:
        """All trials in id order, optionally only those with ``status``."""
        if status is None:
            rows = self._query("SELECT * FROM trials ORDER BY trial_id")
        else:
            rows = self._query("SELECT * FROM trials WHERE status = ? ORDER BY trial_id", (TrialStatus(status).value,))
        return [self._trial(r) for r in rows]

    @staticmethod
    def _trial(row: sqlite3.Row) -> TrialRecord:
        opt_id = row["opt_trial_id"]
        return TrialRecord(
            int(row["trial_id"]), json.loads(row["config"]), row["hub_entry"], TrialStatus(row["status"]),
            row["reason"], row["source"], float(row["created"]), float(row["updated"]),
            None if opt_id is None else int(opt_id),
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

    def budget_used(self, *, tuner_only: bool = False) -> int:
        """Epochs trained and recorded, over all trials (or only the tuner's, ``tuner_only``)."""
        if tuner_only:
            sql = ("SELECT COUNT(*) FROM observations JOIN trials USING (trial_id) "
                   "WHERE trials.opt_trial_id IS NOT NULL")
        else:
            sql = "SELECT COUNT(*) FROM observations"
        return int(self._query(sql)[0][0])

    def best(self, mode: str = "max") -> Observation | None:
        """The best observation over all trials and epochs, or ``None``.

        Raises:
            ConfigurationError: If ``mode`` is not ``"min"`` or ``"max"``.
        """
        if mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', got {mode!r}.")
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
