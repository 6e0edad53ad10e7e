"""Files of a study: atomic writes, the one safe weight loader, and the folder layout.

The layout of a study folder (and of its storage, which holds the same relative paths)::

    snapshots/trial_00001/epoch_0000.safetensors    W_{i,0}: the starting weights
    snapshots/trial_00001/epoch_0003.safetensors    W_{i,3}: the weights after epoch 3
    checkpoints/trial_00001/epoch_0003.ckpt         the Lightning checkpoint after epoch 3

Every weight file is read by :func:`load_weights_file`: safetensors (header and size
checked first), or ``torch.load(weights_only=True)``, never an unrestricted unpickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fms_lightning.errors import ConfigurationError, IncompatibleWeightsError, StudyError

__all__ = [
    "atomic_write", "check_checkpoint_file", "check_safetensors_file", "checkpoint_relpath", "load_state_dict",
    "load_weights_file", "snapshot_relpath", "trial_checkpoint_folder", "write_snapshot_file",
]


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


def checkpoint_relpath(trial_id: int, epoch: int) -> str:
    """Where a trial's Lightning checkpoint after ``epoch`` lives in the storage."""
    return f"{trial_checkpoint_folder(trial_id)}/epoch_{int(epoch):04d}.ckpt"


def trial_checkpoint_folder(trial_id: int) -> str:
    """The storage folder of a trial's Lightning checkpoints."""
    return f"checkpoints/trial_{int(trial_id):05d}"


def load_state_dict(weights: Mapping[str, torch.Tensor] | str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A CPU state_dict from a state_dict or a weight file (:func:`load_weights_file`), for the encoders.

    Raises:
        ConfigurationError: If the file does not exist.
        IncompatibleWeightsError: If ``weights`` is neither a mapping nor a path, or the
            file does not hold a mapping of names to tensors.
    """
    if isinstance(weights, Mapping):
        return {k: v.detach().cpu() for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not isinstance(weights, (str, os.PathLike)):
        raise IncompatibleWeightsError(
            f"weights={type(weights).__name__}; expected a state_dict or a snapshot file path."
        )
    p = Path(weights)
    if not p.is_file():
        raise ConfigurationError(f"Weight file {str(p)!r} does not exist. Pass the path of a saved state dict.")
    try:
        return {str(k): v for k, v in load_weights_file(p).items()}
    except StudyError as err:
        raise IncompatibleWeightsError(
            f"{err} Only plain tensors and containers are accepted (torch.load(weights_only=True)); save "
            "weights with torch.save(model.state_dict()) or safetensors."
        ) from err


def check_checkpoint_file(path: str | os.PathLike[str], name: str) -> str | None:
    """Why the Lightning checkpoint at ``path`` cannot be resumed from, or ``None`` if it looks whole.

    A checkpoint is a zip archive (``torch.save``); its directory and every member's
    CRC are checked, which reads the file once and unpickles nothing.

    Args:
        path: The local file.
        name: How the message names it (its place in the storage).
    """
    import zipfile

    what = None
    try:
        if not os.path.isfile(path):
            what = "missing"
        else:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                what = f"corrupt (member {bad!r} fails its CRC check)"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        what = f"truncated or not a checkpoint ({err})"
    if what is None:
        return None
    return (f"StudyError: the trial's committed checkpoint {name!r} is {what}, so the trial cannot resume from it; "
            "its recorded epochs are kept. Restore the file from a backup to resume the trial.")
