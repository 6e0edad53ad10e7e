"""ModelHub: the pretrained models a study may choose from.

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

What is safe, and what is not:

- **Safe by default.** Reading a manifest runs no code from it. Weights files
  are never unpickled, and names and paths that would leave the folder are
  refused. A manifest's factory must be one of the library's own
  (:data:`LIBRARY_FACTORIES`) or one you trust in code with
  ``ModelHub.from_directory(path, trusted_factories=[make_cnn])``. Any other
  factory is refused *before* anything is imported, with a message that names
  the entry.
- **Not safe: ``trust_code=True``** (``fms-lightning tune --trust-hub-code``).
  The manifest may then name any importable factory, or one in a Python file of
  the hub folder (``factory: models.py:make_cnn``), and that code runs with
  your permissions, like ``trust_remote_code`` in the Hugging Face ecosystem.
  Only pass it for a hub folder whose code you have read or wrote yourself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fms_lightning._imports import first_line
from fms_lightning._imports import import_object as _import_object
from fms_lightning.errors import HubError, StudyError, UnknownHubError
from fms_lightning.study import load_weights_file

__all__ = ["HubEntry", "ModelHub", "import_object", "LIBRARY_FACTORIES"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MANIFESTS = ("hub.yaml", "hub.yml", "hub.json")

#: Factories a hub manifest may name without any opt-in: the library's own.
LIBRARY_FACTORIES: frozenset[str] = frozenset({"fms_lightning.examples.hub_models:make"})


def import_object(spec: str) -> Any:
    """Import ``"package.module:attribute"``.

    This runs the module's code: only call it on strings you trust (a hub
    manifest's factories go through :meth:`ModelHub.from_directory`'s allow-list).

    Raises:
        HubError: If the string is malformed or the object cannot be imported.
    """
    return _import_object(spec, error=HubError)


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

        This calls the entry's factory: code that :meth:`ModelHub.from_directory`
        only accepted from its allow-list (or with ``trust_code=True``).

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
            UnknownHubError: (a ``KeyError``) listing the valid names.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownHubError(f"No hub entry {name!r}; the hub has {self.names}.") from None

    @classmethod
    def from_directory(
        cls, path: str | os.PathLike[str], *, trusted_factories: Iterable[str | Callable[..., nn.Module]] = (),
        trust_code: bool = False,
    ) -> ModelHub:
        """Read a hub folder's manifest (see the module docstring).

        Every entry is checked before any factory is imported, so a manifest that
        names an untrusted factory runs none of its code.

        Args:
            path: The hub folder.
            trusted_factories: Factories the manifest may name besides
                :data:`LIBRARY_FACTORIES`: ``"package.module:attribute"`` strings,
                or the callables themselves (then the manifest names them as
                ``"their.module:qualname"`` and they are used without an import).
            trust_code: Let the manifest name *any* factory, including one in a
                Python file of the hub folder (``factory: models.py:make``). That
                code runs with your permissions: only for hubs whose code you trust.

        Returns:
            The hub, in manifest order.

        Raises:
            HubError: For a missing or malformed manifest, an untrusted factory
                (the message names the entry and how to opt in), an entry whose
                name, weights or code path would escape the folder, or a missing
                weights file.

        >>> hub = ModelHub.from_directory("my_hub/", trusted_factories=[make_cnn])  # doctest: +SKIP
        """
        root = Path(path).resolve()
        if not root.is_dir():
            raise HubError(f"The hub folder {str(root)!r} does not exist or is not a folder; pass a folder "
                           f"holding one of {list(_MANIFESTS)}.")
        manifest = next((root / m for m in _MANIFESTS if (root / m).is_file()), None)
        if manifest is None:
            raise HubError(f"No manifest in {str(root)!r}; expected one of {list(_MANIFESTS)}.")
        try:
            text = manifest.read_text(encoding="utf-8")
            if manifest.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001
            raise HubError(f"Manifest {str(manifest)!r} cannot be read or parsed: {first_line(err)}") from err
        items = data.get("entries") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not items:
            raise HubError(f"Manifest {str(manifest)!r} needs a non-empty list under 'entries'.")
        trusted = _trusted_map(trusted_factories)
        # Check every entry first: nothing is imported unless the whole manifest is acceptable.
        plans = []
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
            kwargs, metadata = item.get("kwargs") or {}, item.get("metadata") or {}
            if not isinstance(kwargs, Mapping) or not isinstance(metadata, Mapping):
                raise HubError(f"Hub entry {name!r}: 'kwargs' and 'metadata' must be mappings, got "
                               f"{type(kwargs).__name__} and {type(metadata).__name__}.")
            plans.append((name, _factory_plan(name, item["factory"], root, trusted, trust_code, manifest),
                          weights, dict(kwargs), dict(metadata)))
        entries = [HubEntry(name, _load_factory(plan, root), weights, kwargs, metadata)
                   for name, plan, weights, kwargs, metadata in plans]
        return cls(entries)


def _callable_spec(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def _trusted_map(trusted: Iterable[str | Callable[..., nn.Module]]) -> dict[str, Callable[..., nn.Module] | None]:
    """``"module:attr" -> callable`` (``None``: import it) for the library's and the user's factories."""
    out: dict[str, Callable[..., nn.Module] | None] = dict.fromkeys(LIBRARY_FACTORIES)
    if isinstance(trusted, (str, bytes)) or callable(trusted):
        trusted = [trusted]  # type: ignore[list-item]
    for t in trusted:
        if isinstance(t, str):
            out.setdefault(t, None)
        elif callable(t):
            out[_callable_spec(t)] = t
        else:
            raise HubError(f"trusted_factories holds {t!r}; expected 'package.module:attribute' strings or callables.")
    return out


def _factory_plan(name: str, spec: Any, root: Path, trusted: Mapping[str, Callable[..., nn.Module] | None],
                  trust_code: bool, manifest: Path) -> tuple[str, Any]:
    """How to get an entry's factory, decided without importing anything.

    Returns ``("callable", fn)``, ``("import", spec)`` or ``("file", (path, attr))``.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise HubError(f"Hub entry {name!r}: factory must be a 'package.module:attribute' string, got {spec!r}.")
    if trusted.get(spec) is not None:
        return "callable", trusted[spec]
    module, attr = spec.split(":")
    is_file = module.endswith(".py") or "/" in module or "\\" in module
    if spec in trusted and not is_file:
        return "import", spec
    if not trust_code:
        how = ("ModelHub.from_directory(path, trust_code=True) or `fms-lightning tune --trust-hub-code`"
               if is_file else
               f"ModelHub.from_directory(path, trusted_factories=[{spec!r}]) (recipe key trusted_factories), "
               "or trust all of the hub's code with trust_code=True / `fms-lightning tune --trust-hub-code`")
        raise HubError(
            f"Hub entry {name!r} of {str(manifest)!r} names the factory {spec!r}, which is not trusted, so nothing "
            f"was imported or run. A manifest may name only the library's own factories "
            f"({', '.join(sorted(LIBRARY_FACTORIES))}) or ones you trust; if you trust this one, pass {how}."
        )
    if not is_file:
        return "import", spec
    path = (root / module).resolve()
    if root not in path.parents or path.suffix != ".py":
        raise HubError(f"Hub entry {name!r}: factory file {module!r} must be a .py file inside the hub folder.")
    if not path.is_file():
        raise HubError(f"Hub entry {name!r}: factory file {str(path)!r} does not exist.")
    return "file", (path, attr)


def _load_factory(plan: tuple[str, Any], root: Path) -> Callable[..., nn.Module]:
    kind, what = plan
    if kind == "callable":
        return what  # type: ignore[no-any-return]
    if kind == "import":
        return import_object(what)  # type: ignore[no-any-return]
    path, attr = what
    _hub_code_object(path, attr)  # load it now, so that a broken file fails here
    return _HubCodeFactory(path, attr)


@dataclass(frozen=True)
class _HubCodeFactory:
    """A factory in a Python file of a trusted hub folder; pickles as its path, so Ray workers load it too."""

    path: Path
    attr: str

    def __call__(self, **kwargs: Any) -> nn.Module:
        return _hub_code_object(self.path, self.attr)(**kwargs)  # type: ignore[no-any-return]


def _hub_code_object(path: Path, attr: str) -> Any:
    """``attr`` of the hub code file ``path``, which is executed once per process."""
    module_name = f"_fms_hub_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise HubError(f"Cannot load the hub code file {str(path)!r}.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - report which file failed
            del sys.modules[module_name]
            raise HubError(f"The hub code file {str(path)!r} raised {type(err).__name__}: {err}") from err
    obj: Any = module
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as err:
        raise HubError(f"The hub code file {str(path)!r} has no {attr!r}: {err}") from err
    if not callable(obj):
        raise HubError(f"{attr!r} in the hub code file {str(path)!r} is not callable.")
    return obj
