"""Shared pytest set-up: the ``--run-slow`` flag and a CPU-friendly thread count."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    # The tests run tiny models, for which one thread is several times faster than
    # two on a 2-core machine (no oversubscription with subprocess tests either).
    torch.set_num_threads(1)
