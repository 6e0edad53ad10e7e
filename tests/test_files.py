"""The study folder's files: layout, atomic writes and the one safe weight loader."""

from __future__ import annotations

import pytest
import torch

from fms_lightning import _files, study
from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError, StudyError


def test_the_layout_names_snapshots_and_checkpoints_by_trial_and_epoch():
    assert _files.snapshot_relpath(3, 2) == "snapshots/trial_00003/epoch_0002.safetensors"
    assert _files.checkpoint_relpath(3, 2) == "checkpoints/trial_00003/epoch_0002.ckpt"
    assert _files.checkpoint_relpath(3, 2).startswith(_files.trial_checkpoint_folder(3) + "/")


def test_old_import_places_still_work():
    from fms_lightning.segment import checkpoint_relpath, check_checkpoint_file

    assert study.load_weights_file is _files.load_weights_file and study.atomic_write is _files.atomic_write
    assert checkpoint_relpath is _files.checkpoint_relpath and check_checkpoint_file is _files.check_checkpoint_file


def test_one_loader_for_snapshots_torch_files_and_state_dicts(tmp_path):
    sd = {"w": torch.arange(3.0)}
    _files.atomic_write(tmp_path / "a.safetensors", lambda tmp: _files.write_snapshot_file(sd, tmp))
    torch.save({"state_dict": sd}, tmp_path / "b.ckpt")
    for path in (tmp_path / "a.safetensors", tmp_path / "b.ckpt"):
        assert torch.equal(_files.load_weights_file(path)["w"], sd["w"])
        assert torch.equal(_files.load_state_dict(path)["w"], sd["w"])
    assert torch.equal(_files.load_state_dict(sd)["w"], sd["w"])


def test_the_loader_refuses_missing_corrupt_and_unsafe_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(StudyError, match="corrupt|truncated|longer"):
        _files.load_weights_file(tmp_path / "bad.safetensors")
    with pytest.raises(IncompatibleWeightsError, match="weights_only=True"):
        _files.load_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigurationError, match="does not exist"):
        _files.load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(IncompatibleWeightsError, match="expected a state_dict"):
        _files.load_state_dict(42)  # type: ignore[arg-type]
