"""FMSOptimizer: the ask/tell core of Forecasting Model Search (Algorithms 1 and 2).

Glossary:
    x_i, j, Y_{i,j-1}, W_{i,j-1}   see ``fms_lightning.surrogate.dataset``.
    EI_MF                          eq. 5, see ``fms_lightning.acquisition``.

The loop: :meth:`FMSOptimizer.suggest` returns ``(trial_id, config, epoch)``; the caller
trains that trial up to ``epoch`` (one more epoch, resuming its checkpoint; for
``method="random"`` all epochs) and reports each epoch with :meth:`FMSOptimizer.observe`.
The optimizer knows nothing of Lightning, nor of the study that stores the trials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fms_lightning._threads import check_threads
from fms_lightning._validate import check_int, check_mode
from fms_lightning.acquisition import Acquisition
from fms_lightning.errors import ConfigurationError, SurrogateError
from fms_lightning.optimizer import _ahead, _model
from fms_lightning.optimizer._nfn import nfn_encoder
from fms_lightning.optimizer._options import (
    Method, Weights, make_featurizer, parse_method, resolve_gmn_training, surrogate_threads,
)
from fms_lightning.optimizer._registry import TrialRegistry, _Trial
from fms_lightning.optimizer._state import _TrialsAndState
from fms_lightning.space import SearchSpace
from fms_lightning.surrogate.dataset import InputLayout, make_row
from fms_lightning.surrogate.gp import Surrogate, SurrogateConfig
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer
from fms_lightning.surrogate.weights import GraphFn
from fms_lightning.trial import Suggestion

__all__ = ["FMSOptimizer"]


class FMSOptimizer(_TrialsAndState):
    """Ask/tell multi-fidelity BO with a deep-kernel GP (DyHPO, and FMS with weights).

    Args:
        space: The search space.
        max_epochs: The maximum budget of a trial, in epochs.
        method: ``"fms-gmn"`` (the default, as in ``FMSTuner``; it needs the weight hooks below),
            ``"fms-flat"``, ``"fms-nfn"`` (one MLP/plain-CNN architecture), ``"dyhpo"``, ``"gp"``, ``"random"``.
        mode: ``"max"`` if larger values are better, else ``"min"``.
        seed: Seed of every random choice (candidate sampling, initialisation).
        learning_curve: Feed Y_{i,j-1} to the surrogate (False: the "no CNN" ablation).
        n_candidates: New configs scored per suggestion (paper A.5: random sampling).
        kernel: ``"matern"`` or ``"rbf"``.
        lr: Adam learning rate of the surrogate (paper: 1e-3 with 1000 and 50 steps; the
            defaults take the same lr x steps in five times fewer steps, see ``SurrogateConfig``).
        initial_steps: Adam steps from scratch while ``<= full_fit_until`` evaluations exist.
        refine_steps: Warm-started Adam steps per refit afterwards.
        full_fit_until: See ``initial_steps``.
        initial_warm_steps: With a number, only the first fit of the initial phase is from
            scratch; the later ones warm-start and take this many steps (None: from scratch each).
        max_train_rows: Cap on exact-GP rows (a seeded subset past it).
        encoder: Weight encoder for the fms methods (default: a seeded ``weightspace.GMNEncoder``
            for ``"fms-gmn"``, ``FlatEncoder(out_dim=64)`` for ``"fms-flat"``, a seeded ``NFNEncoder``
            of the hub's architecture, whose own ``graph_fn`` is used, for ``"fms-nfn"``). With
            ``gmn_training="frozen"`` it stays at its initialisation; otherwise it is the initial
            trunk of the trained GMN.
        gmn_training: How much of the GMN is trained in the loop, jointly with ψ and the kernel
            on eq. 3 (``"fms-gmn"`` only; see ``surrogate.readout``):
            ``"frozen"`` (the random encoder's embedding; the ablation), ``"readout"`` (the
            message-passing trunk frozen, its node states cached once per snapshot, a
            permutation-invariant readout trained), or ``"full"`` (the trunk is trained too, in
            the from-scratch fits; refits train the readout on the re-embedded snapshots).
            Default: ``"readout"`` for ``"fms-gmn"`` (``"frozen"`` for an encoder without
            ``node_states``), ``"frozen"`` for ``"fms-flat"``; ``"fms-nfn"`` trains its NFN likewise.
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
            or ``"auto"`` (the default): ``"ei-mf"`` for every method, the paper's eq. 5; it
            ranked and chose better than ``"ei-horizon"`` for FMS on the zoo benchmarks (probe seeds
            100-105). Either way one epoch is trained per suggestion.
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
        lr: float = 5e-3,
        initial_steps: int = 200,
        refine_steps: int = 10,
        full_fit_until: int = 10,
        initial_warm_steps: int | None = None,
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
        self.method = parse_method(method)
        check_mode(mode)
        self.acquisition = _parse_acquisition(acquisition, self.method)
        check_int(max_epochs, "max_epochs", minimum=1)
        check_int(n_candidates, "n_candidates", minimum=1)
        check_int(gmn_trunk_fits, "gmn_trunk_fits", minimum=0, allow_none=True)
        self.space, self.max_epochs, self.mode, self.seed = space, max_epochs, mode, int(seed)
        self.surrogate_threads = check_threads(surrogate_threads)
        self.n_candidates = n_candidates
        self._rng = np.random.default_rng(self.seed)
        self.gmn_training = resolve_gmn_training(self.method, gmn_training, encoder)
        self.gmn_trunk_fits = gmn_trunk_fits
        if self.method is Method.FMS_NFN and starting_weights_fn is not None:  # the NFN reads its own inputs
            encoder = nfn_encoder(space, starting_weights_fn, model_factory, encoder, self.seed)
            graph_fn = encoder.graph_fn  # type: ignore[assignment]
        self.featurizer = make_featurizer(self.method, self.gmn_training, self.seed, encoder=encoder, graph_fn=graph_fn,
                                          model_factory=model_factory, starting_weights_fn=starting_weights_fn)
        self._start_fn = starting_weights_fn
        self._start_keys: dict[str, str] = {}
        self._weight_keys: dict[str, str] = {}  # snapshot path -> content key, so a restore reads no file again
        self.layout = InputLayout(
            space.encoded_size, max_epochs, self.featurizer.out_dim if self.featurizer is not None else 0
        )
        self.surrogate_config = SurrogateConfig(
            kernel=kernel, lr=lr, initial_steps=initial_steps, refine_steps=refine_steps, full_fit_until=full_fit_until,
            initial_warm_steps=initial_warm_steps,
            max_train_rows=max_train_rows, learning_curve=learning_curve and self.method is not Method.GP,
            use_extractor=self.method is not Method.GP,
        )
        trainable = self.featurizer if isinstance(self.featurizer, SnapshotFeaturizer) else None
        self.surrogate = Surrogate(self.layout, self.surrogate_config, weights=trainable)
        self._trials = TrialRegistry(mode, max_epochs)
        self._fitted_at = 0  # the registry's version at the last fit
        self._pretrained = False
        self._warned: set[str] = set()
        #: fit_ahead()'s record: the version it fit at and each running trial's epochs then; None when unset.
        self._ahead: tuple[int, dict[int, int]] | None = None
        self._conditioned_at = -1  # the version the last fit only conditioned on, with fit_ahead()'s parameters

    # -- ask / tell ------------------------------------------------------------------
    @surrogate_threads
    def suggest(self, *, new_trial_id: int | None = None) -> Suggestion:
        """Pick the next (trial, epoch) by maximising EI_MF (eq. 5) over the candidates.

        Candidates are every paused trial at its next epoch (latest snapshot) and
        ``n_candidates`` new configs at epoch 1 (their hub weights). Running trials are
        fantasised with the posterior mean. Never raises on surrogate failure: it warns once
        and falls back to a random new config.

        Args:
            new_trial_id: The id a new trial gets (e.g. the study's next row id); default:
                one past the largest id so far (0, 1, 2, ...).

        Returns:
            A :class:`Suggestion`; the trial is "running" until observed at ``epoch`` or failed.
        """
        if self.method is Method.RANDOM:
            return self._start(self.space.sample(1, rng=self._rng)[0], self.max_epochs, new_trial_id)
        if self.n_observations == 0:  # initial design (DyHPO): a random config at epoch 1
            return self._start(self.space.sample(1, rng=self._rng)[0], 1, new_trial_id)
        new = self.space.sample(self.n_candidates, rng=self._rng)
        try:
            pick = _model.select(self, new)
        except SurrogateError as err:
            self._warn_once("surrogate", f"The surrogate failed ({err}); suggesting a random config instead.")
            return self._start(new[0], 1, new_trial_id)
        if isinstance(pick, int):
            return self._trials.resume(pick)
        return self._start(pick, 1, new_trial_id)

    @surrogate_threads
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
        trial = self._trials.check_observable(trial_id, epoch)
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
                if isinstance(weights, (str, Path)):
                    self._weight_keys[str(weights)] = key
        self._trials.record(trial, epoch, value, key)

    @surrogate_threads
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
        return _model.predict(self, [dict(c) for c in configs], epoch)

    @surrogate_threads
    def fit_ahead(self) -> bool:
        """Fit the surrogate now to the observations so far, with the running trials pending.

        For fitting while trials train: call it after :meth:`suggest` handed out a trial and
        before that trial is observed. The next fit (in :meth:`suggest` or :meth:`predict`)
        then, if the only observations since are those of the trials running now, conditions
        on them with these parameters (one Cholesky, no optimiser steps) instead of fitting
        again; otherwise it fits as usual. So a suggestion uses parameters one observation
        stale, and the fits follow the same schedule as without this call (from scratch up to
        ``full_fit_until`` observations, then warm-started), each one observation later.

        Nothing is fit ahead while there are fewer than ``full_fit_until`` observations:
        there every fit starts from scratch, and parameters fit to one observation fewer
        made clearly worse early suggestions (the demo's best ``val_acc`` over seeds 0-4:
        0.952 against 0.982 when every fit was made ahead).

        The result depends only on the optimizer's state (same seed and data, same result),
        and is kept by :meth:`state_dict`.

        Returns:
            Whether the surrogate was fit now: False for ``method="random"`` (nothing to fit),
            with fewer than ``full_fit_until`` observations, and when its parameters were
            already fit to these observations (then the next fit conditions on top of them
            all the same).

        Raises:
            SurrogateError: If the surrogate cannot be fit (the next :meth:`suggest` fits as usual).
        """
        return _ahead.fit(self)

    def _fit_ahead_result(self) -> dict[str, Any]:
        """What :meth:`fit_ahead` left, for :meth:`_adopt_fit_ahead` in the process this one was forked from."""
        return _ahead.result(self)

    def _adopt_fit_ahead(self, result: Mapping[str, Any]) -> None:
        """Install :meth:`_fit_ahead_result` of a copy of this optimizer, as if :meth:`fit_ahead` had run here.

        Raises:
            ConfigurationError: If this optimizer's data changed since the copy was made.
        """
        _ahead.adopt(self, result)

    def state_dict(self, *, trials: bool = True, blobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue: after a round trip the next suggestion is identical.

        Args:
            trials: Include the trials. A caller that keeps them elsewhere (the tuner's
                study) passes False and hands them back with :meth:`restore_trial`.
        """
        state = super().state_dict(trials=trials, blobs=blobs)
        state["fit_ahead"] = {"ahead": _ahead.encode(self._ahead), "conditioned_at": self._conditioned_at}
        return state

    def load_state_dict(self, state: Mapping[str, Any], *, blobs: Mapping[str, Any] | None = None) -> None:
        """Restore :meth:`state_dict` output (trials too, when it holds them).

        Raises:
            ConfigurationError: If the state was written by a different method.
        """
        super().load_state_dict(state, blobs=blobs)
        saved = state.get("fit_ahead") or {}
        self._ahead = _ahead.decode(saved.get("ahead"))
        self._conditioned_at = int(saved.get("conditioned_at", -1))

    # -- internals -------------------------------------------------------------------
    def _fits_ahead(self) -> bool:
        """Whether :meth:`fit_ahead` would fit or keep anything now (see there)."""
        return _ahead.applies(self)

    def _use_fit_ahead(self) -> bool:
        """Whether this fit only conditions on the new data with :meth:`fit_ahead`'s parameters (uses the record up)."""
        return _ahead.use(self)

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

    def _start(self, config: dict[str, Any], epoch: int, trial_id: int | None = None) -> Suggestion:
        return self._trials.start(config, epoch, self._start_key(config), trial_id)

    def _emb(self, key: str | None) -> torch.Tensor | None:
        return None if self.featurizer is None else self.featurizer[key]  # type: ignore[index]

    def _row(self, trial: _Trial, x: torch.Tensor, j: int, horizon: int | None = None) -> torch.Tensor:
        return make_row(self.layout, x, j, trial.curve[: j - 1], self._emb(trial.keys[j - 1]), horizon=horizon)

    def _fit(self) -> None:
        _model.fit(self)


def _parse_acquisition(acquisition: str | Acquisition, method: Method) -> Acquisition:
    """``"auto"``: EI_MF (eq. 5) for every method."""
    if acquisition == "auto":
        acquisition = Acquisition.EI_MF
    try:
        return Acquisition(acquisition)
    except ValueError as err:
        raise ConfigurationError(
            f"acquisition={acquisition!r} is unknown; expected 'auto' or one of {[a.value for a in Acquisition]}."
        ) from err
