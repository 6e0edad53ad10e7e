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


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray runtime with 2 CPUs, shared by the Ray tests (skipped when Ray is missing).

    Workers get the repository on ``PYTHONPATH`` so they can import test helpers
    such as ``tests.tiny_task`` by reference, as a user's workers import their code.
    """
    import os
    from pathlib import Path

    ray = pytest.importorskip("ray")
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    warm_workers(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def wait_for_free_cpus(ray, cpus: float = 2.0, timeout: float = 30.0) -> None:
    """Wait until Ray reports ``cpus`` free CPUs (it frees them shortly after tasks end)."""
    import time

    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0.0) < cpus:
        assert time.time() < deadline, f"Ray tasks are still holding CPUs: {ray.available_resources()}"
        time.sleep(0.1)


def warm_workers(ray, n: int = 2) -> None:
    """Make sure ``n`` Ray workers are up with Lightning imported, and their CPUs free again.

    A test that measures parallelism calls this first: a worker that is still
    starting (or replaces one an earlier test killed) would serialise its tasks.
    """
    import os
    import time

    @ray.remote(num_cpus=1)
    def warm_up() -> int:
        import lightning.pytorch  # noqa: F401 - the slow import, done once per worker

        time.sleep(0.5)  # hold the CPU so that each task gets its own worker
        return os.getpid()

    assert len(set(ray.get([warm_up.remote() for _ in range(n)]))) == n
    wait_for_free_cpus(ray, float(n))
