"""The ``>>>`` examples in public docstrings run and give the shown results."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fms_lightning.optim.nadamw",
    "fms_lightning.optim.schedule",
    "fms_lightning.optim.presets",
    "fms_lightning.optim.module",
    "fms_lightning.examples.sklearn_data",
    "fms_lightning.space",
    "fms_lightning.acquisition",
    "fms_lightning.optimizer.core",
    "fms_lightning.study",
    "fms_lightning._study_store",
    "fms_lightning._validate",
    "fms_lightning.storage",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
