"""The install layout: callbacks/ and recipes/ are importable inside fms_lightning, and errors share a base."""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path

import pytest

from fms_lightning import errors

REPO = Path(__file__).resolve().parents[1]


def test_top_level_folders_are_mapped_into_the_package() -> None:
    callbacks = importlib.import_module("fms_lightning.callbacks")
    recipes = importlib.import_module("fms_lightning.recipes")
    assert Path(callbacks.__file__).resolve().parent.name == "callbacks"
    assert resources.files(recipes).joinpath("nadamw_list.yaml").is_file()
    assert resources.files("fms_lightning").joinpath("py.typed").is_file()


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_derives_from_fms_error(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.FMSError)
    if cls is not errors.FMSError:
        # Each also inherits a builtin, so `except ValueError` style code keeps working.
        assert any(b.__module__ == "builtins" and b is not Exception for b in cls.__mro__)


def test_constraints_pin_torch_but_pyproject_keeps_a_range() -> None:
    constraints = (REPO / "constraints.txt").read_text()
    assert "torch==2.13.0" in constraints
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.4"' in pyproject and "torch==" not in pyproject
