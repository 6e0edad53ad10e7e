"""The optimizer's trial registry and its status machine.

A trial is suggested (``running``, to a target epoch), observed epoch by epoch up to
that target (then ``paused``, or ``completed`` at the maximum budget), suggested again,
and so on; it may fail at any point. Values are kept in internal units (larger is
better); :meth:`TrialRegistry.best` converts back to the user's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fms_lightning._validate import MODES
from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer._options import config_key
from fms_lightning.trial import Best, Suggestion, TrialInfo, TrialStatus

__all__ = ["TrialRegistry"]


@dataclass
class _Trial:
    config: dict[str, Any]
    curve: list[float] = field(default_factory=list)  # internal units: larger is better
    keys: list[str | None] = field(default_factory=list)  # keys[e] = content key of W_{i,e}
    status: TrialStatus = TrialStatus.RUNNING
    target: int = 1
    reason: str | None = None
    failed_at: int | None = None  # the epoch that failed, if the trial failed while running


class TrialRegistry:
    """Every trial the optimizer handed out, in the order they were started.

    Args:
        mode: ``"max"`` or ``"min"``: how :meth:`best` converts values back.
        max_epochs: A trial observed at this epoch is completed.
    """

    def __init__(self, mode: str, max_epochs: int) -> None:
        self._sign = MODES[mode]
        self.max_epochs = max_epochs
        self._trials: dict[int, _Trial] = {}

    def __len__(self) -> int:
        return len(self._trials)

    def __iter__(self) -> Iterator[int]:
        return iter(self._trials)

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._trials

    def items(self) -> list[tuple[int, _Trial]]:
        return list(self._trials.items())

    def values(self) -> list[_Trial]:
        return list(self._trials.values())

    def get(self, trial_id: int) -> _Trial:
        if trial_id not in self._trials:
            raise ConfigurationError(f"Unknown trial_id={trial_id!r}; use an id returned by suggest().")
        return self._trials[trial_id]

    def next_id(self) -> int:
        """The id a new trial gets when the caller names none: one past the largest."""
        return max(self._trials, default=-1) + 1

    # ---------------------------------------------------------------- transitions
    def start(self, config: dict[str, Any], epoch: int, start_key: str | None, trial_id: int | None = None) -> Suggestion:
        """A new trial, running to ``epoch``, with ``W_{i,0}`` keyed ``start_key``.

        Raises:
            ConfigurationError: If ``trial_id`` is already taken.
        """
        tid = self.next_id() if trial_id is None else int(trial_id)
        if tid in self._trials:
            raise ConfigurationError(f"new_trial_id={tid} is already a trial of this optimizer; pass an unused id.")
        self._trials[tid] = _Trial(dict(config), keys=[start_key], target=epoch)
        return Suggestion(tid, dict(config), epoch)

    def restore(self, trial_id: int, config: dict[str, Any], values: Any, keys: list[str | None], *,
                status: TrialStatus, target: int, reason: str | None, failed_at: int | None) -> None:
        """Register a trial as it stood: ``values`` y_{i,1..J} in user units, ``keys`` of W_{i,0..J}."""
        self.start(config, target, keys[0], trial_id)
        trial = self._trials[int(trial_id)]
        trial.curve = [float(v) * self._sign for v in values]
        trial.keys = list(keys)
        trial.status, trial.reason, trial.failed_at = status, reason, failed_at

    def resume(self, trial_id: int) -> Suggestion:
        """Run a paused trial for one more epoch."""
        trial = self._trials[trial_id]
        trial.status, trial.target = TrialStatus.RUNNING, len(trial.curve) + 1
        return Suggestion(trial_id, dict(trial.config), trial.target)

    def check_observable(self, trial_id: int, epoch: int) -> _Trial:
        """The trial, if ``epoch`` is the next one it may report.

        Raises:
            ConfigurationError: On an unknown, finished or failed trial, or an out-of-order epoch.
        """
        trial = self.get(trial_id)
        if trial.status is not TrialStatus.RUNNING:
            raise ConfigurationError(
                f"observe(trial_id={trial_id}) but the trial is {trial.status.value}; only trials "
                f"returned by suggest() and still running can be observed."
            )
        expected = len(trial.curve) + 1
        if epoch != expected or epoch > trial.target:
            raise ConfigurationError(
                f"observe(trial_id={trial_id}, epoch={epoch}); expected epoch {expected} "
                f"(epochs are reported in order, up to the suggested epoch {trial.target})."
            )
        return trial

    def record(self, trial: _Trial, epoch: int, value: float, key: str | None) -> None:
        """Append ``y_{i,epoch}`` (user units) and the key of ``W_{i,epoch}``; pause or complete at the target."""
        trial.curve.append(value * self._sign)
        trial.keys.append(key)
        if epoch == trial.target:
            trial.status = TrialStatus.COMPLETED if epoch >= self.max_epochs else TrialStatus.PAUSED

    def mark_failed(self, trial_id: int, reason: str) -> None:
        """Fail a trial; one that was running remembers the epoch it failed at."""
        trial = self.get(trial_id)
        if trial.status is TrialStatus.RUNNING:
            trial.failed_at = len(trial.curve) + 1
        trial.status, trial.reason = TrialStatus.FAILED, str(reason)

    # ---------------------------------------------------------------- queries
    @property
    def n_observations(self) -> int:
        return sum(len(t.curve) for t in self._trials.values())

    @property
    def version(self) -> int:
        """Changes whenever the surrogate's training data does: observations and failures."""
        return self.n_observations + sum(t.failed_at is not None for t in self._trials.values())

    def with_status(self, status: TrialStatus) -> list[tuple[int, _Trial]]:
        return [(tid, t) for tid, t in self._trials.items() if t.status is status]

    def best(self) -> Best | None:
        best: tuple[int, dict[str, Any], int, float] | None = None
        for tid, t in self._trials.items():
            for j, y in enumerate(t.curve, start=1):
                if best is None or y > best[3]:
                    best = (tid, t.config, j, y)
        if best is None:
            return None
        return Best(best[0], dict(best[1]), best[2], best[3] * self._sign)

    def info(self, trial_id: int) -> TrialInfo:
        t = self.get(trial_id)
        return TrialInfo(trial_id, dict(t.config), t.status, len(t.curve), t.target, t.reason)

    def pending(self) -> list[Suggestion]:
        return [Suggestion(tid, dict(t.config), t.target) for tid, t in self._trials.items()
                if t.status is TrialStatus.RUNNING]

    def longest_by_config(self) -> dict[str, _Trial]:
        """Per config key, its trial with the longest curve."""
        known: dict[str, _Trial] = {}
        for t in self._trials.values():
            key = config_key(t.config)
            if key not in known or len(t.curve) > len(known[key].curve):
                known[key] = t
        return known

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[int, dict[str, Any]]:
        return {tid: {"config": t.config, "curve": list(t.curve), "keys": list(t.keys), "status": t.status.value,
                      "target": t.target, "reason": t.reason, "failed_at": t.failed_at}
                for tid, t in self._trials.items()}

    def load_state_dict(self, state: dict[Any, dict[str, Any]]) -> None:
        self._trials = {
            int(tid): _Trial(dict(t["config"]), list(t["curve"]), list(t["keys"]), TrialStatus(t["status"]),
                             int(t["target"]), t.get("reason"), t.get("failed_at"))
            for tid, t in state.items()
        }
