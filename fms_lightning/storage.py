"""Where a study's checkpoints and weight snapshots live, for the driver and for workers.

:class:`Storage` is a folder named by a local path or by an fsspec URL
(``s3://bucket/study``, ``gs://...``, ``file:///...``): what Ray workers on other
machines can reach. Only the files live there; the study's rows stay in the
driver's SQLite file (the driver is the study's only writer).

Every write is atomic: a file is written under a temporary name and moved into
place, so a reader (or a rerun after a crash) sees the whole file or none of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fms_lightning.errors import ConfigurationError
from fms_lightning._files import atomic_write

__all__ = ["Storage", "scratch_prefix", "clean_stale_scratch"]


_SCRATCH_KINDS = ("fms-segment", "fms-upload", "fms-fetch")
_OLD_SCRATCH_SECONDS = 24 * 3600


def scratch_prefix(kind: str) -> str:
    """The prefix of a temporary folder of this process: ``"{kind}-{pid}-"``.

    The pid in the name lets :func:`clean_stale_scratch` tell folders of live
    processes from those a killed process left behind.
    """
    return f"{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_scratch(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the temporary folders (``fms-segment-*``, ...) that killed processes left behind.

    A folder named by :func:`scratch_prefix` is removed when its process is gone;
    one without a pid (written by an earlier version) when it is a day old.

    Args:
        folder: Where to look (default: :func:`tempfile.gettempdir`).

    Returns:
        The folders removed.
    """
    root = Path(folder if folder is not None else tempfile.gettempdir())
    removed = []
    now = time.time()
    for kind in _SCRATCH_KINDS:
        try:
            found = list(root.glob(f"{kind}-*"))
        except OSError:
            return removed
        for path in found:
            pid_text = path.name[len(kind) + 1:].split("-", 1)[0]
            try:
                if not path.is_dir() or path.is_symlink():
                    continue
                if pid_text.isdigit() and "-" in path.name[len(kind) + 1:]:
                    stale = int(pid_text) != os.getpid() and not _alive(int(pid_text))
                else:
                    stale = now - path.stat().st_mtime > _OLD_SCRATCH_SECONDS
            except OSError:
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


class Storage:
    """A folder for checkpoint and snapshot files: a local path or an fsspec URL.

    Paths given to the methods are relative (``"checkpoints/trial_00001/epoch_0002.ckpt"``)
    and may not leave the folder.

    Args:
        root: A local folder, or a URL with a scheme that fsspec knows.

    Raises:
        ConfigurationError: If the URL's scheme has no fsspec implementation installed.

    >>> import tempfile
    >>> store = Storage(tempfile.mkdtemp())
    >>> rel = store.write("a/b.txt", lambda tmp: Path(tmp).write_text("hi"))
    >>> store.fetch(rel).read_text()
    'hi'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = os.fspath(root)
        self.is_url = "://" in text
        self.root = text.rstrip("/") if self.is_url else str(Path(text).resolve())
        self._fs: Any = None
        if self.is_url:
            self._filesystem()  # fail early on an unknown scheme

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "is_url": self.is_url}  # the filesystem is reopened where it lands

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root, self.is_url, self._fs = state["root"], state["is_url"], None

    def _filesystem(self) -> Any:
        if self._fs is None:
            import fsspec

            try:
                self._fs = fsspec.core.url_to_fs(self.root)[0]
            except (ImportError, ValueError) as err:
                raise ConfigurationError(
                    f"Cannot open the storage URL {self.root!r}: {err}. Install the fsspec package for its "
                    "scheme (e.g. s3fs for s3://, gcsfs for gs://), or use a local path."
                ) from err
        return self._fs

    @staticmethod
    def _check(rel: str) -> str:
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            raise ConfigurationError(f"Storage paths must be relative and stay inside the folder, got {rel!r}.")
        return rel

    def uri(self, rel: str = "") -> str:
        """The full local path or URL of ``rel`` (the root for ``""``)."""
        if not rel:
            return self.root
        self._check(rel)
        return f"{self.root}/{rel}" if self.is_url else str(Path(self.root) / rel)

    def local_path(self, rel: str) -> Path | None:
        """The local path of ``rel`` if the storage is a local folder, else ``None``."""
        return None if self.is_url else Path(self.uri(rel))

    def write(self, rel: str, write: Callable[[Path], Any]) -> str:
        """Write ``rel`` atomically with ``write(tmp_path)``; returns ``rel``."""
        self._check(rel)
        local = self.local_path(rel)
        if local is not None:
            atomic_write(local, write)
            return rel
        fs = self._filesystem()
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("fms-upload")) as tmpdir:
            tmp = Path(tmpdir) / Path(rel).name
            write(tmp)
            target = self.uri(rel)
            partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(tmp), partial)
            fs.mv(partial, target)
        return rel

    def exists(self, rel: str) -> bool:
        self._check(rel)
        local = self.local_path(rel)
        return local.is_file() if local is not None else bool(self._filesystem().exists(self.uri(rel)))

    def fetch(self, rel: str, folder: str | os.PathLike[str] | None = None) -> Path:
        """A local file with the contents of ``rel``.

        For a local folder this is the file itself; for a URL it is downloaded
        into ``folder`` (a new temporary folder when ``None``).
        """
        self._check(rel)
        local = self.local_path(rel)
        if local is not None:
            return local
        dest = Path(folder if folder is not None else tempfile.mkdtemp(prefix=scratch_prefix("fms-fetch"))) / Path(rel).name
        self._filesystem().get_file(self.uri(rel), str(dest))
        return dest

    def copy_to(self, rel: str, dest: str | os.PathLike[str]) -> Path:
        """Copy ``rel`` to the local file ``dest`` atomically (nothing to do if it is that file)."""
        self._check(rel)
        dest = Path(dest)
        local = self.local_path(rel)
        if local is not None and local.resolve() == dest.resolve():
            return dest
        if local is not None:
            atomic_write(dest, lambda tmp: shutil.copyfile(local, tmp))
        else:
            atomic_write(dest, lambda tmp: self._filesystem().get_file(self.uri(rel), str(tmp)))
        return dest

    def delete(self, rel: str) -> None:
        """Remove ``rel`` if it exists."""
        self._check(rel)
        local = self.local_path(rel)
        if local is not None:
            local.unlink(missing_ok=True)
            return
        fs = self._filesystem()
        if fs.exists(self.uri(rel)):
            fs.rm(self.uri(rel))

    def list(self, prefix: str) -> list[str]:
        """Relative paths of the files directly inside the folder ``prefix`` (sorted)."""
        local = self.local_path(prefix)
        if local is not None:
            return sorted(f"{prefix}/{p.name}" for p in local.glob("*") if p.is_file()) if local.is_dir() else []
        fs = self._filesystem()
        if not fs.exists(self.uri(prefix)):
            return []
        return sorted(f"{prefix}/{p.rsplit('/', 1)[-1]}" for p in fs.ls(self.uri(prefix), detail=False))
