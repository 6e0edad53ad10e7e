"""The omegaconf recipes of fms_lightning, and helpers to find and load them.

This folder is installed as ``fms_lightning.recipes``; its YAML files ship with the package.

The shipped recipes train the library's examples (``fms_lightning.examples``). A
recipe names them as ``pkg.mod:attr`` strings; the few a recipe may leave out
(the demo's model and data, the embedded ``digits`` hub) are listed in
:data:`BUILTINS` and imported by :func:`builtin` only when used, so the library
itself never imports the examples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = ["BUILTINS", "builtin", "recipe_path", "load_recipe", "available_recipes"]

#: What a recipe gets when it leaves something out, by role, as ``pkg.mod:attr``.
BUILTINS: Mapping[str, str] = {
    "demo": "fms_lightning.examples.demo:run_demo",  # `fms-lightning demo`: train with one preset
    "demo.model": "fms_lightning.examples.digits:DigitsCNN",  # a list recipe without `module`
    "demo.data": "fms_lightning.examples.sklearn_data:SklearnDataModule",  # ... without `datamodule`
    "hub.digits": "fms_lightning.examples.digits_hub:digits_hub",  # a tuning recipe's `hub: digits`
    "tune.module": "fms_lightning.examples.digits_hub:build_hub_classifier",  # ... without `module`
    "tune.datamodule": "fms_lightning.examples.digits_hub:target_datamodule",  # ... without `datamodule`
}


def builtin(role: str) -> Any:
    """Import the object :data:`BUILTINS` names for ``role`` (e.g. ``"demo.model"``).

    Raises:
        KeyError: For a role that is not in :data:`BUILTINS`.
    """
    from fms_lightning._imports import import_object

    return import_object(BUILTINS[role])


def available_recipes() -> list[str]:
    """Names of the recipes that ship with the package (file stems)."""
    root = resources.files("fms_lightning.recipes")
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a shipped recipe name (``"digits_demo"``) or a path to a YAML file.

    Raises:
        UnknownPresetError: If it is neither an existing file nor a shipped recipe.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    candidate = resources.files("fms_lightning.recipes").joinpath(f"{stem}.yaml")
    if candidate.is_file():
        return Path(str(candidate))
    raise UnknownPresetError(
        f"No recipe file or shipped recipe named {os.fspath(name_or_path)!r}; "
        f"shipped recipes are {available_recipes()}."
    )


def load_recipe(name_or_path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load a recipe and apply ``key=value`` overrides (omegaconf dot-list syntax).

    An override with an empty value (``search_space={}``, ``trainer={}``)
    replaces the recipe's value instead of merging into it: it means what it says.

    Raises:
        ConfigurationError: For a file that is not YAML or not a mapping of keys to
            values, or an override that is not of the form ``key=value``.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    path = recipe_path(name_or_path)
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())
        raise ConfigurationError(f"The recipe {str(path)!r} is not valid YAML ({detail}); fix the file, or start "
                                 f"from a shipped recipe ({', '.join(available_recipes())}).") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigurationError(f"The recipe {str(path)!r} holds a {type(cfg).__name__}, not a mapping of keys to "
                                 "values; see recipes/digits_hub.yaml for the format.")
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ConfigurationError(f"Overrides must look like key=value (e.g. trainer.max_epochs=5); got {bad}.")
    for override in overrides:
        try:
            parsed = OmegaConf.from_dotlist([override])
        except OmegaConfBaseException as err:
            detail = " ".join(str(err).split())
            raise ConfigurationError(f"Cannot parse the override {override!r} ({detail}); write key=value, "
                                     "quoting values with special characters.") from None
        key = override.split("=", 1)[0].strip()
        value = OmegaConf.select(parsed, key)
        empty = isinstance(value, (DictConfig, ListConfig)) and len(value) == 0
        try:
            if empty:
                OmegaConf.update(cfg, key, value, merge=False)
            else:
                cfg = OmegaConf.merge(cfg, parsed)
        except OmegaConfBaseException as err:
            detail = " ".join(str(err).split())
            raise ConfigurationError(f"Cannot apply the override {override!r}: {detail}") from None
    assert isinstance(cfg, DictConfig)
    return cfg
