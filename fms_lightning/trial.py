"""A trial's vocabulary, shared by the optimizer, the study and the tuner.

A *trial* is one config trained epoch by epoch. Its status moves::

    pending -> running -> paused -> running -> ... -> completed
                      \\-> failed

Nothing here touches storage: the ask/tell core and the study both import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["TrialStatus", "Suggestion", "TrialInfo", "Best"]


class TrialStatus(str, enum.Enum):
    """Where a trial is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Suggestion:
    """Train trial ``trial_id`` (config ``config``) until it has completed ``epoch`` epochs."""

    trial_id: int
    config: dict[str, Any]
    epoch: int


@dataclass(frozen=True)
class TrialInfo:
    """A trial as the optimizer sees it (a copy: changing it changes nothing).

    Attributes:
        trial_id: The id :meth:`FMSOptimizer.suggest` gave it.
        config: Its hyperparameters.
        status: Running (suggested, not yet observed up to ``target``), paused,
            completed or failed.
        epochs: How many epochs have been observed.
        target: The epoch it was last suggested to train to.
        reason: Why it failed, if it did.
    """

    trial_id: int
    config: dict[str, Any]
    status: TrialStatus
    epochs: int
    target: int
    reason: str | None = None


class Best(NamedTuple):
    """The best observation so far: trial ``trial_id`` (config ``config``) after ``epoch`` epochs had ``value``.

    ``value`` is in the user's units (``mode``).
    """

    trial_id: int
    config: dict[str, Any]
    epoch: int
    value: float
