"""The ``>>>`` examples of the benchmark package run and give the shown results."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["fms_lightning.bench", "fms_lightning.bench.spec", "fms_lightning.bench.metrics",
                                  "fms_lightning.bench.peers", "fms_lightning.bench.walltime",
                                  "fms_lightning.bench.zoo"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
