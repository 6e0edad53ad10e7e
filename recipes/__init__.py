"""The omegaconf recipes of fms_lightning, and helpers to find and load them.

This folder is installed as ``fms_lightning.recipes``; its YAML files ship with the package.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = ["recipe_path", "load_recipe", "available_recipes"]


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

    Raises:
        ConfigurationError: For an override that is not of the form ``key=value``.
    """
    cfg = OmegaConf.load(recipe_path(name_or_path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigurationError(f"Overrides must look like key=value (e.g. trainer.max_epochs=5); got {bad}.")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    assert isinstance(cfg, DictConfig)
    return cfg
