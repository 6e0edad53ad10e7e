"""Storage: atomic writes, fetch, copy, list and delete, for a local folder and an fsspec URL."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from fms_lightning.errors import ConfigurationError
from fms_lightning.storage import Storage


@pytest.fixture(params=["path", "url"])
def store(request, tmp_path) -> Storage:
    root = tmp_path / "store"
    return Storage(root if request.param == "path" else f"file://{root}")


def test_write_fetch_list_delete_round_trip(store, tmp_path) -> None:
    rel = store.write("ckpt/trial_1/epoch_0001.ckpt", lambda tmp: Path(tmp).write_bytes(b"one"))
    store.write("ckpt/trial_1/epoch_0002.ckpt", lambda tmp: Path(tmp).write_bytes(b"two"))
    assert rel == "ckpt/trial_1/epoch_0001.ckpt"
    assert store.exists(rel) and not store.exists("ckpt/trial_1/epoch_0003.ckpt")
    assert store.fetch(rel, tmp_path).read_bytes() == b"one"
    assert store.list("ckpt/trial_1") == ["ckpt/trial_1/epoch_0001.ckpt", "ckpt/trial_1/epoch_0002.ckpt"]
    assert store.list("ckpt/none") == []
    store.copy_to(rel, tmp_path / "copy" / "x.ckpt")
    assert (tmp_path / "copy" / "x.ckpt").read_bytes() == b"one"
    store.delete(rel)
    store.delete(rel)  # missing is fine
    assert store.list("ckpt/trial_1") == ["ckpt/trial_1/epoch_0002.ckpt"]


def test_a_failed_write_leaves_nothing_behind(store) -> None:
    def broken(tmp: Path) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("a/b.bin", broken)
    assert not store.exists("a/b.bin")
    assert store.list("a") == []  # no temporary file either


def test_paths_must_stay_inside_and_bad_schemes_are_explained(store) -> None:
    for bad in ("../x", "/etc/passwd", ""):
        with pytest.raises(ConfigurationError, match="relative"):
            store.write(bad, lambda tmp: None)
    with pytest.raises(ConfigurationError, match="Cannot open the storage URL"):
        Storage("nosuchscheme://bucket/study")


def test_storage_pickles_to_workers(store) -> None:
    store.write("x.txt", lambda tmp: Path(tmp).write_text("hi"))
    copy = pickle.loads(pickle.dumps(store))
    assert copy == store and copy.fetch("x.txt").read_text() == "hi"
