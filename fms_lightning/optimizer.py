"""FMSOptimizer: the ask/tell core of Forecasting Model Search (Algorithms 1 and 2).

Glossary:
    x_i, j, Y_{i,j-1}, W_{i,j-1}   see ``fms_lightning.surrogate.dataset``.
    EI_MF                          eq. 5, see ``fms_lightning.acquisition``.

The loop: :meth:`FMSOptimizer.suggest` returns ``(trial_id, config, epoch)``; the caller
trains that trial up to ``epoch`` (one more epoch, resuming its checkpoint; for
``method="random"`` all epochs) and reports each epoch with :meth:`FMSOptimizer.observe`.
The optimizer knows nothing of Lightning.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fms_lightning._threads import capped_threads, check_threads
from fms_lightning.acquisition import Acquisition, ExpectedImprovementMF, HorizonExpectedImprovement
from fms_lightning.errors import ConfigurationError, SurrogateError
from fms_lightning.space import SearchSpace
from fms_lightning.study import TrialStatus  # one status vocabulary for the optimizer and the study
from fms_lightning.surrogate.dataset import InputLayout, forecast_rows, make_row, training_rows
from fms_lightning.surrogate.gp import Surrogate, SurrogateConfig
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer
from fms_lightning.surrogate.weights import GraphFn, WeightFeaturizer, model_graph_fn

__all__ = ["Method", "TrialStatus", "Suggestion", "TrialInfo", "FMSOptimizer"]

Weights = Mapping[str, torch.Tensor] | str | Path


class Method(str, Enum):
    FMS_GMN = "fms-gmn"
    FMS_FLAT = "fms-flat"
    DYHPO = "dyhpo"
    GP = "gp"
    RANDOM = "random"

    @property
    def uses_weights(self) -> bool:
        return self in (Method.FMS_GMN, Method.FMS_FLAT)


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


@dataclass
class _Trial:
    config: dict[str, Any]
    curve: list[float] = field(default_factory=list)  # internal units: larger is better
    keys: list[str | None] = field(default_factory=list)  # keys[e] = content key of W_{i,e}
    status: TrialStatus = TrialStatus.RUNNING
    target: int = 1
    reason: str | None = None
    failed_at: int | None = None  # the epoch that failed, if the trial failed while running


_FLAT_OUT_DIM = 64


def _config_key(config: Mapping[str, Any]) -> str:
    """A hashable identity of a config (the same values give the same key)."""
    return repr(sorted(config.items()))


DEFAULT_GMN_TRAINING = GMNTraining.READOUT


def _resolve_gmn_training(method: Method, value: str | GMNTraining | None, encoder: nn.Module | None) -> GMNTraining:
    """The GMN training mode: only ``"fms-gmn"`` trains its encoder; None picks the default."""
    if value is None:
        if method is not Method.FMS_GMN or (encoder is not None and not callable(getattr(encoder, "node_states", None))):
            return GMNTraining.FROZEN
        return DEFAULT_GMN_TRAINING
    try:
        mode = GMNTraining(value)
    except ValueError as err:
        raise ConfigurationError(
            f"gmn_training={value!r} is unknown; expected one of {[m.value for m in GMNTraining]}."
        ) from err
    if mode is not GMNTraining.FROZEN and method is not Method.FMS_GMN:
        raise ConfigurationError(
            f"gmn_training={mode.value!r} with method={method.value!r}; only method='fms-gmn' trains its "
            f"weight encoder. Pass gmn_training='frozen' or leave it unset."
        )
    return mode


def _surrogate_threads(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an optimizer method with ``self.surrogate_threads`` torch threads (the caller's count is restored)."""

    @functools.wraps(method)
    def wrapper(self: FMSOptimizer, *args: Any, **kwargs: Any) -> Any:
        with capped_threads(self.surrogate_threads):
            return method(self, *args, **kwargs)

    return wrapper


def _default_encoder(method: Method, seed: int) -> tuple[nn.Module | Callable[[Any], nn.Module], int | None]:
    """The paper's encoders, seeded without touching the global RNG: GMN (A.6) or FLAT."""
    from fms_lightning.weightspace import FlatEncoder, GMNEncoder

    if method is Method.FMS_GMN:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return GMNEncoder(), None

    def flat(reference: Any) -> nn.Module:  # FlatEncoder needs a graph of the architecture
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FlatEncoder(reference, out_dim=_FLAT_OUT_DIM)

    return flat, _FLAT_OUT_DIM


class FMSOptimizer:
    """Ask/tell multi-fidelity BO with a deep-kernel GP (DyHPO, and FMS with weights).

    Args:
        space: The search space.
        max_epochs: The maximum budget of a trial, in epochs.
        method: ``"fms-gmn"`` (the default, as in ``FMSTuner``; it needs the weight hooks below),
            ``"fms-flat"``, ``"dyhpo"``, ``"gp"`` or ``"random"``.
        mode: ``"max"`` if larger values are better, else ``"min"``.
        seed: Seed of every random choice (candidate sampling, initialisation).
        learning_curve: Feed Y_{i,j-1} to the surrogate (False: the "no CNN" ablation).
        n_candidates: New configs scored per suggestion (paper A.5: random sampling).
        kernel: ``"matern"`` or ``"rbf"``.
        lr: Adam learning rate of the surrogate (paper: 1e-3).
        initial_steps: Adam steps from scratch while ``<= full_fit_until`` evaluations exist.
        refine_steps: Warm-started Adam steps per refit afterwards.
        full_fit_until: See ``initial_steps``.
        max_train_rows: Cap on exact-GP rows (a seeded subset past it).
        encoder: Weight encoder for the fms methods (default: a seeded ``weightspace.GMNEncoder``
            for ``"fms-gmn"``, ``FlatEncoder(out_dim=64)`` for ``"fms-flat"``). With
            ``gmn_training="frozen"`` it stays at its initialisation; otherwise it is the initial
            trunk of the trained GMN.
        gmn_training: How much of the GMN is trained in the loop, jointly with ψ and the kernel
            on eq. 3 (``"fms-gmn"`` only; see ``surrogate.readout``):
            ``"frozen"`` (the random encoder's embedding; the ablation), ``"readout"`` (the
            message-passing trunk frozen, its node states cached once per snapshot, a
            permutation-invariant readout trained), or ``"full"`` (the trunk is trained too, in
            the from-scratch fits; refits train the readout on the re-embedded snapshots).
            Default: ``"readout"`` for ``"fms-gmn"`` (``"frozen"`` for an encoder without
            ``node_states``), ``"frozen"`` for ``"fms-flat"``.
        gmn_trunk_fits: With ``gmn_training="full"``: how many of the last from-scratch fits
            train the trunk, counted in observations (the fits at ``full_fit_until -
            gmn_trunk_fits + 1`` to ``full_fit_until`` observations; the last one's trunk is the
            one the refine phase keeps); None: every from-scratch fit. ``pretrain()`` always
            trains it (up to 64 distinct snapshots).
        graph_fn: ``graph_fn(config, state_dict) -> Data``; the fms methods need it or ``model_factory``.
        model_factory: ``model_factory(config) -> nn.Module``; gives
            ``graph_fn = parameter_graph(model_factory(config), state_dict)``.
        starting_weights_fn: ``starting_weights_fn(config) -> state_dict | path`` giving
            W_{i,0} (the hub checkpoint); called once per hub entry; required by the fms methods.
        acquisition: ``"ei-mf"`` (eq. 5, DyHPO: the next epoch against y_j^max),
            ``"ei-horizon"`` (the forecast at the deepest budget observed so far, at least the
            candidate's next epoch, against the best value so far; the surrogate also learns from
            look-ahead rows, see ``surrogate.dataset.forecast_rows``),
            or ``"auto"``: ``"ei-mf"`` for ``"dyhpo"`` and ``"gp"`` (as published),
            ``"ei-horizon"`` for the fms methods. Either way one epoch is trained per suggestion.
        surrogate_threads: Torch intra-op threads while the optimizer fits and queries its
            surrogate (``suggest``, ``observe``, ``predict``, ``pretrain``); the caller's
            ``torch.get_num_threads()`` is restored afterwards. The default 1 is the fastest
            for the surrogate's small matrices; ``None`` keeps torch's setting.

    Raises:
        ConfigurationError: On an invalid option, or an fms method without its weight hooks.

    >>> from fms_lightning import LogUniform
    >>> opt = FMSOptimizer(SearchSpace({"lr": LogUniform(1e-4, 1e-1)}), max_epochs=3, method="dyhpo")
    >>> s = opt.suggest()
    >>> (s.trial_id, s.epoch)
    (0, 1)
    >>> opt.observe(s.trial_id, s.epoch, 0.5)
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        max_epochs: int,
        method: str | Method = "fms-gmn",
        mode: str = "max",
        seed: int = 0,
        learning_curve: bool = True,
        n_candidates: int = 512,
        kernel: str = "matern",
        lr: float = 1e-3,
        initial_steps: int = 1000,
        refine_steps: int = 50,
        full_fit_until: int = 10,
        max_train_rows: int = 1500,
        encoder: nn.Module | None = None,
        graph_fn: GraphFn | None = None,
        model_factory: Callable[[dict[str, Any]], nn.Module] | None = None,
        starting_weights_fn: Callable[[dict[str, Any]], Weights] | None = None,
        acquisition: str | Acquisition = "auto",
        gmn_training: str | GMNTraining | None = None,
        gmn_trunk_fits: int | None = None,
        surrogate_threads: int | None = 1,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise ConfigurationError(f"space={space!r}; expected a SearchSpace.")
        try:
            self.method = Method(method)
        except ValueError as err:
            raise ConfigurationError(
                f"method={method!r} is unknown; valid methods are {[m.value for m in Method]}."
            ) from err
        if mode not in ("max", "min"):
            raise ConfigurationError(f"mode={mode!r}; expected 'max' or 'min'.")
        if acquisition == "auto":
            acquisition = Acquisition.EI_HORIZON if self.method.uses_weights else Acquisition.EI_MF
        try:
            self.acquisition = Acquisition(acquisition)
        except ValueError as err:
            raise ConfigurationError(
                f"acquisition={acquisition!r} is unknown; expected 'auto' or one of "
                f"{[a.value for a in Acquisition]}."
            ) from err
        if not isinstance(max_epochs, int) or max_epochs < 1 or n_candidates < 1:
            raise ConfigurationError(
                f"max_epochs={max_epochs!r}, n_candidates={n_candidates!r}; expected integers >= 1."
            )
        self.space, self.max_epochs, self.mode, self.seed = space, max_epochs, mode, int(seed)
        self.surrogate_threads = check_threads(surrogate_threads)
        self.n_candidates = n_candidates
        self._rng = np.random.default_rng(self.seed)
        self.featurizer: WeightFeaturizer | SnapshotFeaturizer | None = None
        self.gmn_training = _resolve_gmn_training(self.method, gmn_training, encoder)
        if gmn_trunk_fits is not None and (not isinstance(gmn_trunk_fits, int) or gmn_trunk_fits < 0):
            raise ConfigurationError(f"gmn_trunk_fits={gmn_trunk_fits!r}; expected None or an integer >= 0.")
        self.gmn_trunk_fits = gmn_trunk_fits
        if self.method.uses_weights:
            if graph_fn is None and model_factory is not None:
                graph_fn = model_graph_fn(model_factory)
            if graph_fn is None or starting_weights_fn is None:
                raise ConfigurationError(
                    f"method={self.method.value!r} reads checkpointed weights and needs graph_fn(config, "
                    f"state_dict) (or model_factory(config)) and starting_weights_fn(config); pass them, "
                    f"or use method='dyhpo'."
                )
            enc, out_dim = (encoder, None) if encoder is not None else _default_encoder(self.method, self.seed)
            if self.gmn_training is GMNTraining.FROZEN:
                self.featurizer = WeightFeaturizer(enc, graph_fn, out_dim=out_dim)
            else:
                self.featurizer = SnapshotFeaturizer(enc, graph_fn, mode=self.gmn_training)  # type: ignore[arg-type]
        self._start_fn = starting_weights_fn
        self._start_keys: dict[str, str] = {}
        self.layout = InputLayout(
            space.encoded_size, max_epochs, self.featurizer.out_dim if self.featurizer is not None else 0
        )
        self.surrogate_config = SurrogateConfig(
            kernel=kernel,
            lr=lr,
            initial_steps=initial_steps,
            refine_steps=refine_steps,
            full_fit_until=full_fit_until,
            max_train_rows=max_train_rows,
            learning_curve=learning_curve and self.method is not Method.GP,
            use_extractor=self.method is not Method.GP,
        )
        trainable = self.featurizer if isinstance(self.featurizer, SnapshotFeaturizer) else None
        self.surrogate = Surrogate(self.layout, self.surrogate_config, weights=trainable)
        self.trials: dict[int, _Trial] = {}
        self._fitted_at = 0  # number of observations at the last fit
        self._pretrained = False
        self._warned: set[str] = set()

    # -- public API ------------------------------------------------------------------
    @property
    def n_observations(self) -> int:
        return sum(len(t.curve) for t in self.trials.values())

    @_surrogate_threads
    def suggest(self) -> Suggestion:
        """Pick the next (trial, epoch) by maximising EI_MF (eq. 5) over the candidates.

        Candidates are every paused trial at its next epoch (latest snapshot) and
        ``n_candidates`` new configs at epoch 1 (their hub weights). Running trials are
        fantasised with the posterior mean. Never raises on surrogate failure: it warns once
        and falls back to a random new config.

        Returns:
            A :class:`Suggestion`; the trial is "running" until observed at ``epoch`` or failed.
        """
        if self.method is Method.RANDOM:
            return self._start(self.space.sample(1, rng=self._rng)[0], self.max_epochs)
        if self.n_observations == 0:  # initial design (DyHPO): a random config at epoch 1
            return self._start(self.space.sample(1, rng=self._rng)[0], 1)
        new = self.space.sample(self.n_candidates, rng=self._rng)
        try:
            return self._suggest_model(new)
        except SurrogateError as err:
            self._warn_once("surrogate", f"The surrogate failed ({err}); suggesting a random config instead.")
            return self._start(new[0], 1)

    @_surrogate_threads
    def observe(self, trial_id: int, epoch: int, value: float, weights: Weights | None = None) -> None:
        """Record y_{i,epoch} and, for the fms methods, the snapshot W_{i,epoch}.

        Args:
            trial_id: A trial returned by :meth:`suggest`.
            epoch: The epoch just completed; epochs are reported in order 1, 2, ...
            value: The metric after that epoch. A non-finite value marks the trial failed.
            weights: The snapshot after ``epoch`` (state_dict or file path); used as
                W_{i,epoch} for the row of y_{i,epoch+1}, never for y_{i,epoch}.

        Raises:
            ConfigurationError: On an unknown, finished or failed trial, or an out-of-order epoch.
        """
        trial = self._get(trial_id)
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
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(
                f"observe(trial_id={trial_id}) received value={value!r}; expected a number."
            ) from err
        if not math.isfinite(value):
            self._warn_once("nonfinite", f"Trial {trial_id} reported value={value!r}; marking it failed.")
            self.mark_failed(trial_id, f"non-finite value {value!r} at epoch {epoch}")
            return
        key = trial.keys[-1]
        if self.featurizer is not None:
            if weights is None:
                self._warn_once(
                    "noweights", f"method={self.method.value!r} expects weights in observe(); reusing the "
                    f"previous snapshot for trials that report none."
                )
            else:
                key = self.featurizer.add(trial.config, weights)
        trial.curve.append(value if self.mode == "max" else -value)
        trial.keys.append(key)
        if epoch == trial.target:
            trial.status = TrialStatus.COMPLETED if epoch >= self.max_epochs else TrialStatus.PAUSED

    def mark_failed(self, trial_id: int, reason: str) -> None:
        """Exclude a trial from further suggestions; its observed epochs stay as data.

        A trial that fails while running also teaches the surrogate: the epoch it failed at
        becomes a training row labelled with the worst value observed so far (it does not
        count as an observation, nor for y_j^max), so that regions that fail are avoided.
        """
        trial = self._get(trial_id)
        if trial.status is TrialStatus.RUNNING:
            trial.failed_at = len(trial.curve) + 1
        trial.status, trial.reason = TrialStatus.FAILED, str(reason)

    def best(self) -> tuple[int, dict[str, Any], int, float] | None:
        """``(trial_id, config, epoch, value)`` of the best observation so far, or None."""
        best = None
        for tid, t in self.trials.items():
            for j, y in enumerate(t.curve, start=1):
                if best is None or y > best[3]:
                    best = (tid, t.config, j, y)
        if best is None:
            return None
        return best[0], dict(best[1]), best[2], best[3] if self.mode == "max" else -best[3]

    @_surrogate_threads
    def predict(
        self, configs: Iterable[Mapping[str, Any]], *, epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The surrogate's posterior of y at ``epoch`` for each config, given what is known.

        A config that has a trial (the one with the longest curve) is predicted from its
        observed curve before ``epoch`` and its latest snapshot before ``epoch``; any other
        config from an empty curve and its starting weights W_{i,0}. The surrogate is
        (re)fit first if new observations arrived, exactly as :meth:`suggest` would.

        Args:
            configs: Configs of the search space.
            epoch: The budget to predict at (default ``max_epochs``: the final metric).

        Returns:
            ``(mean, std)``, each `(n,)`, in the user's units (``mode``).

        Raises:
            ConfigurationError: For ``method="random"``, before any observation, or a bad ``epoch``.
        """
        epoch = self.max_epochs if epoch is None else int(epoch)
        if self.method is Method.RANDOM or self.n_observations == 0 or not 1 <= epoch <= self.max_epochs:
            raise ConfigurationError(
                f"predict(epoch={epoch}) with method={self.method.value!r} and {self.n_observations} "
                f"observations; expected a model-based method, at least one observation and "
                f"1 <= epoch <= {self.max_epochs}."
            )
        configs = [dict(c) for c in configs]
        known: dict[str, _Trial] = {}
        for t in self.trials.values():
            key = _config_key(t.config)
            if key not in known or len(t.curve) > len(known[key].curve):
                known[key] = t
        trials = [known.get(_config_key(c)) for c in configs]
        start_keys = [None if t is not None else self._start_key(c) for c, t in zip(configs, trials)]
        self._fit()
        xs = self.space.encode(configs)
        rows = []
        for x, t, skey in zip(xs, trials, start_keys):
            curve = [] if t is None else t.curve[: epoch - 1]
            wkey = skey if t is None else t.keys[len(curve)]
            rows.append(make_row(self.layout, x, len(curve) + 1, curve, self._emb(wkey), horizon=epoch))
        mean, std = self.surrogate.predict(torch.stack(rows))
        return (mean if self.mode == "max" else -mean), std

    def trial(self, trial_id: int) -> TrialInfo:
        """What the optimizer knows of one trial.

        Raises:
            ConfigurationError: For an id that :meth:`suggest` never returned.
        """
        t = self._get(trial_id)
        return TrialInfo(trial_id, dict(t.config), t.status, len(t.curve), t.target, t.reason)

    @property
    def trial_ids(self) -> list[int]:
        """Every trial id handed out, in order."""
        return list(self.trials)

    def pending(self) -> list[Suggestion]:
        """The suggestions handed out and not yet observed to their epoch (nor failed), oldest first."""
        return [Suggestion(tid, dict(t.config), t.target) for tid, t in self.trials.items()
                if t.status is TrialStatus.RUNNING]

    # -- internals -------------------------------------------------------------------
    def _get(self, trial_id: int) -> _Trial:
        if trial_id not in self.trials:
            raise ConfigurationError(f"Unknown trial_id={trial_id!r}; use an id returned by suggest().")
        return self.trials[trial_id]

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _start_key(self, config: Mapping[str, Any]) -> str | None:
        if self.featurizer is None or self._start_fn is None:
            return None
        hub = str(config[self.space.hub_name]) if self.space.hub_name else "__init__"
        if hub not in self._start_keys:
            self._start_keys[hub] = self.featurizer.add(config, self._start_fn(dict(config)))
        return self._start_keys[hub]

    def _start(self, config: dict[str, Any], epoch: int) -> Suggestion:
        tid = len(self.trials)
        self.trials[tid] = _Trial(dict(config), keys=[self._start_key(config)], target=epoch)
        return Suggestion(tid, dict(config), epoch)

    def _emb(self, key: str | None) -> torch.Tensor | None:
        return None if self.featurizer is None else self.featurizer[key]  # type: ignore[index]

    def _row(self, trial: _Trial, x: torch.Tensor, j: int, horizon: int | None = None) -> torch.Tensor:
        return make_row(self.layout, x, j, trial.curve[: j - 1], self._emb(trial.keys[j - 1]), horizon=horizon)

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        trials = list(self.trials.values())
        xs = self.space.encode([t.config for t in trials])
        emb = None
        if self.featurizer is not None:
            self.featurizer.flush()
            emb = self.featurizer.cache
        data = [(x, t.curve, t.keys) for x, t in zip(xs, trials)]
        rows, y = training_rows(self.layout, data, emb)
        failed = [(x, t) for x, t in zip(xs, trials) if t.failed_at is not None]
        if failed and y.numel():  # failures, imputed with the worst observed value
            pen = torch.stack([self._row(t, x, t.failed_at) for x, t in failed])  # type: ignore[arg-type]
            rows, y = torch.cat([rows, pen]), torch.cat([y, y.min().expand(len(failed))])
        cap = self.surrogate_config.max_train_rows
        if rows.shape[0] > cap:  # keep each trial's latest row, then a seeded subset of the rest
            ends = np.cumsum([len(t.curve) for t in trials])
            latest = [int(e) - 1 for k, e in enumerate(ends) if len(trials[k].curve)]
            rest = np.setdiff1d(np.arange(rows.shape[0]), latest)
            pick = np.random.default_rng([self.seed, rows.shape[0]]).choice(
                rest, size=max(cap - len(latest), 0), replace=False
            )
            idx = torch.as_tensor(np.sort(np.concatenate([latest, pick]))[:cap] if len(latest) < cap else latest[-cap:])
            rows, y = rows[idx], y[idx]
        if self.acquisition is Acquisition.EI_HORIZON and y.numel():
            ahead, y_ahead = forecast_rows(self.layout, data, emb)
            room = max(cap - rows.shape[0], 0)
            if ahead.shape[0] > room:  # the cap holds: a seeded subset of the look-ahead rows
                pick = np.random.default_rng([self.seed, ahead.shape[0], 1]).choice(ahead.shape[0], room, replace=False)
                ahead, y_ahead = ahead[np.sort(pick)], y_ahead[np.sort(pick)]
            rows, y = torch.cat([rows, ahead]), torch.cat([y, y_ahead])
        return rows, y

    def _fit(self) -> None:
        n_obs = self.n_observations
        version = n_obs + sum(t.failed_at is not None for t in self.trials.values())
        population = None
        if isinstance(self.featurizer, WeightFeaturizer):  # standardise ξ(W) over every known snapshot and hub checkpoint
            self.featurizer.flush()
            population = torch.stack([self.featurizer.cache[k] for k in sorted(self.featurizer.cache)])
        rows, y = self._training_data()
        cfg = self.surrogate_config
        new_data = version != self._fitted_at or self.surrogate.model is None
        scratch = new_data and n_obs <= cfg.full_fit_until and not self._pretrained
        steps = 0 if not new_data else (cfg.initial_steps if scratch else cfg.refine_steps)
        if isinstance(self.featurizer, SnapshotFeaturizer):  # which from-scratch fits train the GMN trunk
            k = self.gmn_trunk_fits
            self.featurizer.trunk_enabled = k is None or n_obs > cfg.full_fit_until - k
        self.surrogate.fit(
            rows, y, steps=steps, from_scratch=scratch, seed=self.seed * 100_003 + n_obs, weight_population=population
        )
        self._fitted_at = version

    def _suggest_model(self, new: list[dict[str, Any]]) -> Suggestion:
        seen = {_config_key(t.config) for t in self.trials.values()}
        unseen = [c for c in new if _config_key(c) not in seen]
        new = unseen or new  # a config that has a trial is represented by that trial (finite spaces)
        new_keys = [self._start_key(c) for c in new]  # hub checkpoints W_{i,0}, loaded once per entry
        self._fit()
        paused = [(tid, t) for tid, t in self.trials.items() if t.status is TrialStatus.PAUSED]
        running = [t for t in self.trials.values() if t.status is TrialStatus.RUNNING]
        xs = self.space.encode([t.config for _, t in paused] + [t.config for t in running] + new)
        horizon = None
        if self.acquisition is Acquisition.EI_HORIZON:  # the deepest budget observed: forecasts stay on data
            horizon = max(len(t.curve) for t in self.trials.values())
        rows = [self._row(t, xs[k], len(t.curve) + 1, None if horizon is None else max(horizon, len(t.curve) + 1))
                for k, (_, t) in enumerate(paused)]
        fantasy = [self._row(t, xs[len(paused) + k], t.target) for k, t in enumerate(running)]
        off = len(paused) + len(running)
        rows += [make_row(self.layout, xs[off + k], 1, [], self._emb(key), horizon=horizon)
                 for k, key in enumerate(new_keys)]
        budgets = torch.tensor([len(t.curve) + 1 for _, t in paused] + [1] * len(new))
        mean, std = self.surrogate.predict(
            torch.stack(rows), fantasy_rows=torch.stack(fantasy) if fantasy else None
        )
        ob = torch.tensor([j for t in self.trials.values() for j in range(1, len(t.curve) + 1)])
        ov = torch.tensor([y for t in self.trials.values() for y in t.curve], dtype=torch.float64)
        if horizon is None:
            ei = ExpectedImprovementMF(ob, ov)(mean, std, budgets)
        else:
            ei = HorizonExpectedImprovement(ov)(mean, std)
        if float(ei.max()) <= 0.0:  # EI underflowed everywhere: rank by the z-score instead
            best = torch.tensor([float(ov.max())], dtype=torch.float64)
            ei = (mean - best) / std.clamp_min(1e-12)
        k = int(torch.argmax(ei))
        if k < len(paused):
            tid, trial = paused[k]
            trial.status, trial.target = TrialStatus.RUNNING, len(trial.curve) + 1
            return Suggestion(tid, dict(trial.config), trial.target)
        return self._start(new[k - len(paused)], 1)

    # -- state, transfer -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the study: after a round trip the next suggestion is identical."""
        return {
            "version": 1,
            "method": self.method.value,
            "gmn_training": self.gmn_training.value,
            "trials": {
                tid: {"config": t.config, "curve": list(t.curve), "keys": list(t.keys),
                      "status": t.status.value, "target": t.target, "reason": t.reason,
                      "failed_at": t.failed_at}
                for tid, t in self.trials.items()
            },
            "rng": self._rng.bit_generator.state,
            "fitted_at": self._fitted_at,
            "pretrained": self._pretrained,
            "start_keys": dict(self._start_keys),
            "surrogate": self.surrogate.state_dict(),
            "featurizer": None if self.featurizer is None else self.featurizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ConfigurationError: If the state was written by a different method.
        """
        if state.get("method", self.method.value) != self.method.value:
            raise ConfigurationError(
                f"State was saved with method={state.get('method')!r}; this optimizer uses "
                f"{self.method.value!r}. Construct the optimizer with the same method."
            )
        saved = state.get("gmn_training", GMNTraining.FROZEN.value)
        if self.featurizer is not None and saved != self.gmn_training.value:
            raise ConfigurationError(
                f"State was saved with gmn_training={saved!r}; this optimizer uses "
                f"{self.gmn_training.value!r}. Construct the optimizer with gmn_training={saved!r}."
            )
        self.trials = {
            int(tid): _Trial(dict(t["config"]), list(t["curve"]), list(t["keys"]), TrialStatus(t["status"]),
                             int(t["target"]), t.get("reason"), t.get("failed_at"))
            for tid, t in state.get("trials", {}).items()
        }
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._fitted_at = int(state.get("fitted_at", 0))
        self._pretrained = bool(state.get("pretrained", False))
        self._start_keys = dict(state.get("start_keys", {}))
        if self.featurizer is not None and state.get("featurizer") is not None:  # before ψ, which reads its bank
            self.featurizer.load_state_dict(state["featurizer"])
        self.surrogate.load_state_dict(state.get("surrogate", {}))

    @_surrogate_threads
    def pretrain(self, trials: Iterable[Mapping[str, Any]], *, steps: int | None = None) -> None:
        """Learn the surrogate from earlier studies (transfer, paper Fig. 3).

        Args:
            trials: Each ``{"config": ..., "curve": [y_1, ..., y_J], "weights": [W_0, ..., W_J]}``
                (values in this optimizer's ``mode``; ``weights`` needed by the fms methods).
            steps: Adam steps from scratch (default ``initial_steps``). Afterwards every fit
                warm-starts from the pretrained parameters.

        Raises:
            ConfigurationError: If a trial is malformed.
        """
        data = []
        for k, t in enumerate(trials):
            curve = [float(v) if self.mode == "max" else -float(v) for v in t.get("curve", [])]
            keys: list[str | None] = [None] * (len(curve) + 1)
            if self.featurizer is not None:
                ws = t.get("weights")
                if ws is None or len(ws) != len(curve) + 1:
                    raise ConfigurationError(
                        f"pretrain: trial {k} has {0 if ws is None else len(ws)} weights for "
                        f"{len(curve)} epochs; expected W_0..W_J ({len(curve) + 1} snapshots)."
                    )
                keys = [self.featurizer.add(t["config"], w) for w in ws]
            data.append((self.space.encode([t["config"]])[0], curve, keys))
        if self.featurizer is not None:
            self.featurizer.flush()
        rows, y = training_rows(self.layout, data, self.featurizer.cache if self.featurizer is not None else None)
        steps = self.surrogate_config.initial_steps if steps is None else steps
        if isinstance(self.featurizer, SnapshotFeaturizer):
            self.featurizer.trunk_enabled = True
        self.surrogate.fit(rows, y, steps=steps, from_scratch=True, seed=self.seed)
        self._pretrained = True
        self._fitted_at = -1  # force a (warm) refit on the study's own data

    def save_surrogate(self, path: str | Path) -> None:
        """Save the surrogate's parameters (and the weight encoder) to ``path``."""
        enc = None
        if self.featurizer is not None and self.featurizer.encoder is not None:
            enc = self.featurizer.encoder.state_dict()
        torch.save({"method": self.method.value, "surrogate": self.surrogate.state_dict(), "encoder": enc}, path)

    def load_surrogate(self, path: str | Path) -> None:
        """Load parameters saved by :meth:`save_surrogate` (safe loading); later fits warm-start."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("method") != self.method.value:
            raise ConfigurationError(
                f"{str(path)!r} holds a {state.get('method')!r} surrogate; this optimizer uses "
                f"{self.method.value!r}."
            )
        if self.featurizer is not None and state.get("encoder") is not None:
            if self.trials:
                raise ConfigurationError(
                    "load_surrogate() would change the weight encoder after trials were observed; "
                    "load the surrogate before the first suggest()."
                )
            if self.featurizer.encoder is None:  # a lazily built encoder (FLAT): build it first
                raise ConfigurationError(
                    "load_surrogate() cannot restore a FLAT encoder before it has seen a graph; pass "
                    "encoder=FlatEncoder(reference_graph, ...) to the optimizer."
                )
            if isinstance(self.featurizer, SnapshotFeaturizer):
                self.featurizer.load_encoder(state["encoder"])  # node states belong to the old trunk
            else:
                self.featurizer.encoder.load_state_dict(state["encoder"])
                self.featurizer.cache.clear()  # embeddings belong to the old encoder version
                self._start_keys.clear()
        self.surrogate.load_state_dict(state["surrogate"])
        self._pretrained, self._fitted_at = True, -1
