"""ModelHub: the pretrained models a study may choose from, loaded safely.

A hub entry has a name, a factory that builds the ``nn.Module``, and a weights
file. Weights are read with safetensors or ``torch.load(weights_only=True)``;
arbitrary pickles are never unpickled.

A hub folder has a manifest, ``hub.yaml`` (or ``hub.json``)::

    entries:
      - name: cnn-small
        factory: mypkg.models:make_cnn      # "module:attribute", called with kwargs
        kwargs: {channels: 16}
        weights: cnn-small.safetensors     # relative to the folder
        metadata: {pretrain_epochs: 20}     # optional, free-form

The factory string imports code, exactly as a recipe's ``module:`` key does:
only load manifests you trust as you would trust their Python.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fms_lightning.errors import HubError, StudyError, UnknownPresetError
from fms_lightning.study import load_weights_file

__all__ = ["HubEntry", "ModelHub", "import_object"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MANIFESTS = ("hub.yaml", "hub.yml", "hub.json")


def import_object(spec: str) -> Any:
    """Import ``"package.module:attribute"``.

    Raises:
        HubError: If the string is malformed or the object cannot be imported.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HubError(f"Expected 'package.module:attribute', got {spec!r}.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise HubError(f"Cannot import {spec!r}: {err}") from err
    return obj


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise HubError(
            f"Invalid hub entry name {name!r}: use letters, digits, '.', '_', '+' and '-' only "
            "(no path separators and no '..')."
        )


@dataclass(frozen=True)
class HubEntry:
    """One pretrained model.

    Args:
        name: A unique, path-safe name.
        factory: Builds the architecture (called with ``**kwargs``).
        weights: Path of the weights file (safetensors, or a torch file loadable
            with ``weights_only=True``), or ``None`` for a fresh initialisation.
        kwargs: Arguments of ``factory``.
        metadata: Free-form facts about the entry (pretraining length, ...).

    Raises:
        HubError: For an unsafe name.
    """

    name: str
    factory: Callable[..., nn.Module]
    weights: Path | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not callable(self.factory):
            raise HubError(f"Hub entry {self.name!r}: factory must be callable, got {self.factory!r}.")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The entry's weights (empty dict for an entry without a weights file).

        Raises:
            HubError: If the file is missing or corrupt; the message names the entry.
        """
        if self.weights is None:
            return {}
        try:
            return load_weights_file(self.weights)
        except StudyError as err:
            raise HubError(f"Hub entry {self.name!r}: {err}") from err

    def build(self, *, load_weights: bool = True) -> nn.Module:
        """Build the module and, by default, load the entry's weights strictly.

        Raises:
            HubError: If the factory fails, does not return an ``nn.Module``, or
                the weights do not fit the architecture.
        """
        try:
            model = self.factory(**dict(self.kwargs))
        except Exception as err:  # noqa: BLE001 - report which entry failed
            raise HubError(f"Hub entry {self.name!r}: the factory raised {type(err).__name__}: {err}") from err
        if not isinstance(model, nn.Module):
            raise HubError(f"Hub entry {self.name!r}: the factory returned {type(model).__name__}, not an nn.Module.")
        if load_weights and self.weights is not None:
            try:
                model.load_state_dict(self.state_dict())
            except RuntimeError as err:
                raise HubError(f"Hub entry {self.name!r}: weights do not fit the architecture: {err}") from err
        return model


class ModelHub(Sequence[HubEntry]):
    """An ordered collection of :class:`HubEntry`, looked up by index or name.

    Raises:
        HubError: For duplicate names.
    """

    def __init__(self, entries: Sequence[HubEntry]) -> None:
        self._entries = list(entries)
        names = [e.name for e in self._entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise HubError(f"Duplicate hub entry names: {dupes}.")
        self._by_name = {e.name: e for e in self._entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.get(key)
        return self._entries[key]

    def __iter__(self) -> Iterator[HubEntry]:
        return iter(self._entries)

    @property
    def names(self) -> list[str]:
        """Entry names in hub order."""
        return [e.name for e in self._entries]

    def get(self, name: str) -> HubEntry:  # type: ignore[override]
        """The entry called ``name``.

        Raises:
            UnknownPresetError: (a ``KeyError``) listing the valid names.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPresetError(f"No hub entry {name!r}; the hub has {self.names}.") from None

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> ModelHub:
        """Read a hub folder's manifest (see the module docstring).

        Raises:
            HubError: For a missing or malformed manifest, an entry whose name or
                weights path would escape the folder, or a missing weights file.
        """
        root = Path(path).resolve()
        manifest = next((root / m for m in _MANIFESTS if (root / m).is_file()), None)
        if manifest is None:
            raise HubError(f"No manifest in {str(root)!r}; expected one of {list(_MANIFESTS)}.")
        text = manifest.read_text(encoding="utf-8")
        try:
            if manifest.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001
            raise HubError(f"Manifest {str(manifest)!r} cannot be parsed: {err}") from err
        items = data.get("entries") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not items:
            raise HubError(f"Manifest {str(manifest)!r} needs a non-empty list under 'entries'.")
        entries = []
        for i, item in enumerate(items, 1):
            if not isinstance(item, Mapping) or "name" not in item or "factory" not in item:
                raise HubError(f"Manifest entry {i} needs at least 'name' and 'factory', got {item!r}.")
            name = item["name"]
            _check_name(name)
            weights = None
            if item.get("weights") is not None:
                weights = (root / str(item["weights"])).resolve()
                if root not in weights.parents:
                    raise HubError(f"Hub entry {name!r}: weights path {item['weights']!r} escapes the hub folder.")
                if not weights.is_file():
                    raise HubError(f"Hub entry {name!r}: weights file {str(weights)!r} does not exist.")
            factory = item["factory"]
            if isinstance(factory, str):
                factory = import_object(factory)
            entries.append(
                HubEntry(name, factory, weights, dict(item.get("kwargs") or {}), dict(item.get("metadata") or {}))
            )
        return cls(entries)
