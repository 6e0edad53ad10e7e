"""fms_lightning.executors: the tuner's executors, bound to a segment runner (the generic ones are in _parallel)."""

from __future__ import annotations

from fms_lightning import _parallel, executors


class Runner:
    """Stands in for a SegmentRunner: ``run(spec)`` returns what it trained."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def run(self, spec: str) -> str:
        self.ran.append(spec)
        return f"trained {spec}"


def test_local_executor_runs_segments_with_its_runner() -> None:
    runner = Runner()
    executor = executors.LocalExecutor(runner)
    assert executor.runner is runner and executor.capacity == 1
    executor.submit("a")
    executor.submit("b")
    assert executor.next_done(timeout=0.0) is None and runner.ran == []
    assert executor.next_done() == ("a", "trained a") and executor.in_flight == ["b"]
    executor.close()
    assert len(executor) == 0


def test_the_names_the_tuner_imports_are_the_generic_ones() -> None:
    assert executors.RayExecutor is _parallel.RayExecutor
    assert executors.LostWorker is _parallel.LostWorker and executors.RayFailure is _parallel.RayFailure
    assert isinstance(executors.LocalExecutor(Runner()), _parallel.LocalExecutor)
