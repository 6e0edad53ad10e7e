"""The optimizer's trials as the caller sees them, its saved state, and transfer between studies.

:class:`_TrialsAndState` is a base of :class:`~fms_lightning.optimizer.FMSOptimizer`:
what it is asked about its trials (:meth:`trial`, :meth:`pending`), how it is
saved and restored (:meth:`state_dict`, :meth:`restore_trial`), and transfer
(:meth:`pretrain`, :meth:`save_surrogate`, :meth:`load_surrogate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import _model, transfer
from fms_lightning.optimizer._options import Weights, surrogate_threads
from fms_lightning.trial import Best, Suggestion, TrialInfo, TrialStatus

if TYPE_CHECKING:
    from fms_lightning.optimizer._registry import TrialRegistry

__all__: list[str] = []


class _TrialsAndState:
    """Trial queries, state and transfer of :class:`~fms_lightning.optimizer.FMSOptimizer`."""

    _trials: TrialRegistry
    _rng: np.random.Generator
    _fitted_at: int
    _pretrained: bool
    _start_keys: dict[str, str]
    _weight_keys: dict[str, str]
    featurizer: Any
    surrogate: Any
    method: Any
    gmn_training: Any
    mode: str
    surrogate_threads: int | None

    def _start_key(self, config: Mapping[str, Any]) -> str | None:
        raise NotImplementedError

    def _weight_key(self, config: dict[str, Any], weights: Weights) -> str:
        """The content key of a snapshot: remembered by path when it was observed, else read."""
        key = self._weight_keys.get(str(weights)) if isinstance(weights, (str, Path)) else None
        if key is None or key not in self.featurizer.cache:
            key = self.featurizer.add(config, weights)
            if isinstance(weights, (str, Path)):
                self._weight_keys[str(weights)] = key
        return key

    def add_snapshots(self, snapshots: Iterable[tuple[Mapping[str, Any], Weights]]) -> None:
        """Hand the weight featurizer snapshots ``(config, weights)`` in this order, ahead of :meth:`restore_trial`.

        The featurizer numbers and embeds snapshots in the order it is given them. A caller
        that resumes from a state saved before some observations were made hands their
        snapshots here in the order they were observed, so that the featurizer holds them
        exactly as an uninterrupted run would; :meth:`restore_trial` then finds them known.
        Snapshots it knows already are skipped (a file known by its path is not read again).
        Nothing happens for the methods that do not read weights.

        Args:
            snapshots: Each a trial's config and a snapshot (a state_dict or a file path).
        """
        if self.featurizer is None:
            return
        for config, weights in snapshots:
            self._weight_key(dict(config), weights)

    @property
    def n_observations(self) -> int:
        return self._trials.n_observations

    def mark_failed(self, trial_id: int, reason: str) -> None:
        """Exclude a trial from further suggestions; its observed epochs stay as data.

        A trial that fails while running also teaches the surrogate: the epoch it failed at
        becomes a training row labelled with the worst value observed so far (it does not
        count as an observation, nor for y_j^max), so that regions that fail are avoided.
        """
        self._trials.mark_failed(trial_id, reason)

    def best(self) -> Best | None:
        """The best observation so far as :class:`~fms_lightning.trial.Best` ``(trial_id, config, epoch, value)``."""
        return self._trials.best()

    @surrogate_threads
    def training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows the surrogate is fit on: ``(inputs, labels)``, `(n, width)` and `(n,)`, larger is better.

        One row per observation (``surrogate.dataset.training_rows``), one per trial that
        failed while running (labelled with the worst value), capped at ``max_train_rows``,
        then the look-ahead rows of ``acquisition="ei-horizon"``.
        """
        return _model.training_data(self)

    def trial(self, trial_id: int) -> TrialInfo:
        """What the optimizer knows of one trial.

        Raises:
            ConfigurationError: For an id that :meth:`suggest` never returned.
        """
        return self._trials.info(trial_id)

    @property
    def trial_ids(self) -> list[int]:
        """Every trial id handed out, in order."""
        return list(self._trials)

    def pending(self) -> list[Suggestion]:
        """The suggestions handed out and not yet observed to their epoch (nor failed), oldest first."""
        return self._trials.pending()

    @surrogate_threads
    def restore_trial(
        self, trial_id: int, config: Mapping[str, Any], *, values: Sequence[float] = (),
        weights: Sequence[Weights | None] = (), status: TrialStatus | str = TrialStatus.PAUSED,
        target: int | None = None, reason: str | None = None, failed_at: int | None = None,
    ) -> None:
        """Register a trial from its durable record (the study's rows), as it stood.

        The optimizer's :meth:`state_dict` holds no trials: on resume, the caller hands
        each trial back here, in the order the trials were started.

        Args:
            trial_id: Its id.
            config: Its hyperparameters.
            values: y_{i,1..J} in the user's units.
            weights: W_{i,1..J} (state_dicts or file paths; None: the previous one again);
                ignored by the methods that do not read weights.
            status: Its status.
            target: The epoch it was last suggested to train to (default ``J``, at least 1).
            reason: Why it failed, if it did.
            failed_at: The epoch that failed while running, if it did (a training row).

        Raises:
            ConfigurationError: If the id is taken, or there are more weights than values.
        """
        if len(weights) > len(values):
            raise ConfigurationError(f"restore_trial({trial_id}): {len(weights)} weights for {len(values)} values.")
        config = dict(config)
        keys = [self._start_key(config)]
        for j in range(len(values)):
            w = weights[j] if j < len(weights) else None
            keys.append(keys[-1] if self.featurizer is None or w is None else self._weight_key(config, w))
        self._trials.restore(trial_id, config, values, keys, status=TrialStatus(status),
                             target=max(len(values), 1) if target is None else int(target), reason=reason,
                             failed_at=failed_at)

    # -- state and transfer ----------------------------------------------------------
    def state_dict(self, *, trials: bool = True, blobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue: after a round trip the next suggestion is identical.

        Args:
            trials: Include the trials. A caller that keeps them elsewhere (the tuner's
                study) passes False and hands them back with :meth:`restore_trial`.
            blobs: If given, the weight featurizer's parts that never change once made (the
                parameter graphs of snapshots held in memory, their wirings, the frozen
                encoder) go into this dict under content keys, and the state names the keys:
                a caller that stores each key once (the tuner's study) saves a small state
                that does not grow with the graphs. Pass the same parts to :meth:`load_state_dict`.
        """
        state = {
            "version": 2,
            "method": self.method.value,
            "gmn_training": self.gmn_training.value,
            "rng": self._rng.bit_generator.state,
            "fitted_at": self._fitted_at,
            "pretrained": self._pretrained,
            "start_keys": dict(self._start_keys),
            "weight_keys": dict(self._weight_keys),
            "surrogate": self.surrogate.state_dict(),
            "featurizer": None if self.featurizer is None else (
                self.featurizer.state_dict() if blobs is None else self.featurizer.state_dict(blobs=blobs)),
        }
        if trials:
            state["trials"] = self._trials.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], *, blobs: Mapping[str, Any] | None = None) -> None:
        """Restore :meth:`state_dict` output (trials too, when it holds them).

        Args:
            state: The state.
            blobs: The parts a ``state_dict(blobs=...)`` named by key (a mapping that may load
                them on access, such as :meth:`Study.tuner_blobs <fms_lightning.study.Study.tuner_blobs>`).

        Raises:
            ConfigurationError: If the state was written by a different method, or names
                a part that ``blobs`` lacks.
        """
        transfer.check_state(self, state)
        if "trials" in state:
            self._trials.load_state_dict(state["trials"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._fitted_at = int(state.get("fitted_at", 0))
        self._pretrained = bool(state.get("pretrained", False))
        self._start_keys = dict(state.get("start_keys", {}))
        self._weight_keys = dict(state.get("weight_keys", {}))
        if self.featurizer is not None and state.get("featurizer") is not None:  # before ψ, which reads its bank
            self.featurizer.load_state_dict(state["featurizer"], blobs=blobs)
        self.surrogate.load_state_dict(state.get("surrogate", {}))

    @surrogate_threads
    def pretrain(self, trials: Iterable[Mapping[str, Any]], *, steps: int | None = None) -> None:
        """Learn the surrogate from earlier studies (transfer, paper Fig. 3); see :func:`transfer.pretrain`."""
        transfer.pretrain(self, trials, steps=steps)

    def save_surrogate(self, path: str | Path) -> None:
        """Save the surrogate's parameters (and the weight encoder) to ``path``."""
        transfer.save_surrogate(self, path)

    def load_surrogate(self, path: str | Path) -> None:
        """Load parameters saved by :meth:`save_surrogate` (safe loading); later fits warm-start."""
        transfer.load_surrogate(self, path)

