"""The study folder underneath :class:`~fms_lightning.study.Study`: its SQLite file and lock, and its files.

:class:`_StudyStore` opens (and creates) the database, holds the single-writer
lock, runs transactions, and keeps the values that are not trial rows: meta
values, the stored optimizer state, and the weight snapshot files.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from typing_extensions import Self

import torch

from fms_lightning._files import atomic_write, load_weights_file, snapshot_relpath, write_snapshot_file
from fms_lightning.errors import StudyError, StudyLockedError

__all__: list[str] = []

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
CREATE TABLE IF NOT EXISTS tuner_blobs (key TEXT PRIMARY KEY, blob BLOB NOT NULL);
"""
# ``tuner_blobs`` (added without a schema bump: writers create it, readers of older files find none):
# the parts of the tuner state that never change once written, each stored once under its content
# key (parameter graphs, their wirings, the frozen weight encoder); the state names them by key.



def _json_default(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class _StudyStore:
    """The study folder's database, lock and files (see :class:`~fms_lightning.study.Study`)."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, lock: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock_fh: Any = None
        self._conn: Any = None
        self._mutex = threading.RLock()
        self._tx: sqlite3.Cursor | None = None
        self._old_ids = False  # a file from before schema 3, with its ``opt_trial_id`` column
        self._blob_keys: set[str] | None = None  # keys in ``tuner_blobs`` (None: not read yet, or unsure)
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
                self._blob_keys = None  # blobs written in the transaction are gone again
                cur.execute("ROLLBACK")
                raise
            self._tx = None
            cur.execute("COMMIT")

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Make every write inside the block one transaction: all of them are recorded, or none.

        >>> import tempfile
        >>> from fms_lightning.study import Study
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    def save_tuner_state(self, state: Mapping[str, Any], blobs: Mapping[str, Any] | None = None) -> None:
        """Store the optimizer's ``state_dict`` (tensors and plain values) in one transaction.

        Args:
            state: The state; it replaces the stored one.
            blobs: Parts the state names by content key (``FMSOptimizer.state_dict(blobs=...)``).
                Each key is written once, the first time it is seen; a key already stored
                is not serialised again, so passing every key at every save costs nothing.
        """
        import io

        buf = io.BytesIO()
        torch.save(dict(state), buf)
        with self._transaction() as cur:
            known = self._stored_blob_keys(cur)  # forgotten again if the (outer) transaction rolls back
            for key, value in (blobs or {}).items():
                if key in known:
                    continue
                blob = io.BytesIO()
                torch.save(value, blob)
                cur.execute("INSERT OR IGNORE INTO tuner_blobs(key, blob) VALUES (?, ?)", (str(key), blob.getvalue()))
                known.add(key)
            cur.execute(
                "INSERT OR REPLACE INTO tuner_state(id, state, updated) VALUES (0, ?, ?)", (buf.getvalue(), time.time())
            )

    def _stored_blob_keys(self, cur: sqlite3.Cursor) -> set[str]:
        if self._blob_keys is None:
            self._blob_keys = {r[0] for r in cur.execute("SELECT key FROM tuner_blobs")}
        return self._blob_keys

    def tuner_blobs(self) -> Mapping[str, Any]:
        """The stored parts of the tuner state, by key, each loaded (``weights_only=True``) when first read.

        A missing key raises ``KeyError``; a corrupt blob raises :class:`StudyError`.
        """
        return _Blobs(self)

    def load_tuner_state(self) -> dict[str, Any] | None:
        """The stored optimizer state, loaded with ``weights_only=True``, or ``None``.

        Raises:
            StudyError: If the stored state is corrupt (or holds anything but
                tensors and plain values); the rows are untouched, and
                :meth:`FMSTuner.fit <fms_lightning.FMSTuner.fit>` rebuilds the state from them.
        """
        rows = self._query("SELECT state FROM tuner_state WHERE id = 0")
        if not rows:
            return None
        state = _load_stored(rows[0][0], f"The tuner state stored in {str(self.path / 'study.sqlite')!r}")
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


class _Blobs(Mapping[str, Any]):
    """A read view of a study's ``tuner_blobs``, loading each blob once, on first access."""

    def __init__(self, store: _StudyStore) -> None:
        self._store = store
        self._loaded: dict[str, Any] = {}

    def _has_table(self) -> bool:
        return bool(self._store._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tuner_blobs'"))

    def __getitem__(self, key: str) -> Any:
        if key in self._loaded:
            return self._loaded[key]
        if not self._has_table():
            raise KeyError(key)
        rows = self._store._query("SELECT blob FROM tuner_blobs WHERE key = ?", (str(key),))
        if not rows:
            raise KeyError(key)
        value = _load_stored(
            rows[0][0], f"The part {key!r} of the tuner state stored in {str(self._store.path / 'study.sqlite')!r}"
        )
        self._loaded[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        if not self._has_table():
            return iter(())
        return iter([r[0] for r in self._store._query("SELECT key FROM tuner_blobs ORDER BY key")])

    def __len__(self) -> int:
        return int(self._store._query("SELECT COUNT(*) FROM tuner_blobs")[0][0]) if self._has_table() else 0


def _load_stored(data: bytes, what: str) -> Any:
    """``torch.load`` of a stored blob, tensors and plain values only.

    Raises:
        StudyError: Naming ``what`` (e.g. "The tuner state stored in '...'"), if the blob is corrupt or unsafe.
    """
    import io

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means a corrupt (or unsafe) blob
        detail = (str(err).strip().splitlines() or [""])[0]
        raise StudyError(
            f"{what} cannot be loaded ({type(err).__name__}: {detail}); it is refused. The study's rows are intact: "
            "FMSTuner.fit() rebuilds the tuner state from them."
        ) from None
