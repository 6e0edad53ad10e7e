"""Optuna peers replayed against a cached benchmark, with the accounting of :mod:`~fms_lightning.bench.replay`.

A peer is an Optuna sampler and pruner driven through ask/tell. Every query is answered
from the cache, like the FMS replays:

- **Search space**: each dimension of ``bench.space`` (the hub member and the grid's
  choices) becomes a ``CategoricalDistribution``, so every suggested config is in the cache.
- **Epochs**: a trial trains one epoch at a time; after each, its ``val_acc``
  (``bench.curves[k, epoch - 1]``) is reported (``trial.report(value, epoch)``) and the
  trial stops when ``trial.should_prune()`` says so. Every epoch trained counts 1 toward the
  budget, pruned trials included, and the run stops exactly at the budget, even inside a
  trial. A config that the sampler suggests again is trained again (as Optuna would).
- **Regret**: :func:`~fms_lightning.bench.metrics.regret_curve` of the values in spending order.
- **Overhead**: wall time inside Optuna (``ask``, ``report``, ``should_prune``, ``tell``).
- **Kendall's τ** is not measured: a peer has no model that predicts every config's final
  value, so its τ is left out (``{}``; ``–`` in the report).

Variants (:func:`peer_variants`, :func:`is_peer`):

=======================  ==============================  ============================================
name                     sampler                         pruner
=======================  ==============================  ============================================
``tpe-hyperband``        ``TPESampler`` (10 start-up)    ``HyperbandPruner(1, E, reduction_factor=3)``
``tpe-hyperband-s<n>``   ``TPESampler(n_startup=n)``     same
``tpe``                  ``TPESampler`` (10 start-up)    none (``NopPruner``): every trial trains E epochs
``tpe-s<n>``             ``TPESampler(n_startup=n)``     none
``sh``                   ``RandomSampler``               ``SuccessiveHalvingPruner(1, reduction_factor=3)``
=======================  ==============================  ============================================

With TPE's default of 10 random start-up trials, ``tpe`` at 100 epochs of E = 10 runs 10
trials, all random; Hyperband counts start-up trials per bracket. The ``-s<n>`` variants use
:func:`budget_startup_trials`, a rule fixed in advance from the budget and E (not tuned on
the reported seeds).

Optuna is the optional extra ``pip install 'fms-lightning[bench]'``; it is imported only
when a peer runs.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fms_lightning.bench.metrics import regret_curve
from fms_lightning.bench.replay import RunResult, RunSettings, epoch_costs
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = ["PEERS", "budget_startup_trials", "is_peer", "peer_variants", "require_optuna", "run_peer"]

# base name -> (sampler, pruner); a TPE base also accepts the suffix "-s<n>" (n start-up trials).
PEERS: dict[str, tuple[str, str]] = {
    "tpe-hyperband": ("tpe", "hyperband"),
    "tpe": ("tpe", "none"),
    "sh": ("random", "successive-halving"),
}
_DEFAULT_STARTUP = 10  # TPESampler's default n_startup_trials
_NAME = re.compile(r"^(?P<base>tpe-hyperband|tpe|sh)(?:-s(?P<startup>[1-9][0-9]*))?$")


def budget_startup_trials(budget: int, epochs: int) -> int:
    """TPE start-up trials suited to a budget: a quarter of the full-length trials it affords, at least 2.

    ``max(2, budget // (4 * epochs))``: at 100 epochs of budget and E = 10 (or 20) this is 2, so
    TPE models from its third trial on instead of never.

    >>> budget_startup_trials(100, 10), budget_startup_trials(400, 10), budget_startup_trials(8, 4)
    (2, 10, 2)
    """
    return max(2, budget // (4 * epochs))


def _parse(variant: str) -> tuple[str, str, int | None]:
    m = _NAME.match(variant)
    if m is None or (m["startup"] is not None and PEERS[m["base"]][0] != "tpe"):
        raise UnknownPresetError(
            f"Unknown peer {variant!r}; expected one of {list(PEERS)}, or 'tpe-s<n>' / 'tpe-hyperband-s<n>' "
            f"(n >= 1 random start-up trials)."
        )
    sampler, pruner = PEERS[m["base"]]
    return sampler, pruner, None if m["startup"] is None else int(m["startup"])


def is_peer(variant: str) -> bool:
    """Whether ``variant`` names an Optuna peer (``tpe``, ``tpe-s3``, ``tpe-hyperband``, ``sh``, ...)."""
    try:
        _parse(variant)
    except UnknownPresetError:
        return False
    return True


def peer_variants(budget: int, epochs: int) -> list[str]:
    """The peers of a benchmark run: each TPE variant with the default and the budget's start-up count.

    >>> peer_variants(100, 10)
    ['tpe-hyperband', 'tpe-hyperband-s2', 'tpe', 'tpe-s2', 'sh']
    """
    n = budget_startup_trials(budget, epochs)
    return ["tpe-hyperband", f"tpe-hyperband-s{n}", "tpe", f"tpe-s{n}", "sh"]


def require_optuna() -> Any:
    """Import and return ``optuna``.

    Raises:
        ConfigurationError: If Optuna is not installed (the message names the extra).
    """
    try:
        import optuna
    except ImportError as err:
        raise ConfigurationError(
            "The Optuna peers of the benchmark (tpe, tpe-hyperband, sh) need Optuna, which is not installed. "
            "Install the extra with pip install 'fms-lightning[bench]' (or `make bench`), or leave the peers "
            "out of --methods."
        ) from err
    return optuna


def _study(optuna: Any, bench: Benchmark, variant: str, seed: int) -> Any:
    sampler_kind, pruner_kind, startup = _parse(variant)
    if sampler_kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup or _DEFAULT_STARTUP)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    if pruner_kind == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=bench.epochs, reduction_factor=3)
    elif pruner_kind == "successive-halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    else:
        pruner = optuna.pruners.NopPruner()
    # A fixed study name: Hyperband assigns brackets by a hash of (study name, trial number).
    return optuna.create_study(study_name=f"{bench.name}-{variant}-seed{seed}", direction="maximize",
                               sampler=sampler, pruner=pruner)


def run_peer(bench: Benchmark, variant: str, seed: int, settings: RunSettings | None = None) -> RunResult:
    """Replay one run of an Optuna peer on ``bench``.

    Args:
        bench: The cached benchmark.
        variant: A peer name (see the module docstring and :func:`is_peer`).
        seed: Seed of the sampler.
        settings: Shared settings; only ``budget`` is used.

    Returns:
        The :class:`~fms_lightning.bench.replay.RunResult` (``tau`` empty).

    Raises:
        UnknownPresetError: For an unknown peer name.
        ConfigurationError: If Optuna is not installed.
    """
    optuna = require_optuna()
    settings = settings or RunSettings()
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    costs, source = epoch_costs(bench)
    dists = {name: CategoricalDistribution(list(bench.space[name].values)) for name in bench.space.names}
    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    start = time.perf_counter()
    values: list[float] = []
    overhead_at: list[float] = []
    train_at: list[float] = []
    overhead, trained, n_trials = 0.0, 0.0, 0
    best: tuple[float, dict[str, Any]] | None = None
    try:
        study = _study(optuna, bench, variant, seed)
        while len(values) < settings.budget:
            t0 = time.perf_counter()
            trial = study.ask(dists)
            overhead += time.perf_counter() - t0
            n_trials += 1
            config = {name: trial.params[name] for name in bench.space.names}
            k = bench.index(config)
            state, value = TrialState.COMPLETE, None
            for epoch in range(1, bench.epochs + 1):
                if len(values) >= settings.budget:
                    state = None  # budget spent inside this trial: it is left unfinished
                    break
                value = float(bench.curves[k, epoch - 1])
                values.append(value)
                trained += float(costs[k, epoch - 1])
                if best is None or value > best[0]:
                    best = (value, config)
                t0 = time.perf_counter()
                trial.report(value, epoch)
                prune = epoch < bench.epochs and trial.should_prune()
                overhead += time.perf_counter() - t0
                overhead_at.append(overhead)
                train_at.append(trained)
                if prune:
                    state = TrialState.PRUNED
                    break
            if state is not None:
                t0 = time.perf_counter()
                if state is TrialState.PRUNED:
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    study.tell(trial, value)
                overhead += time.perf_counter() - t0
    finally:
        optuna.logging.set_verbosity(old_verbosity)
    return RunResult(
        benchmark=bench.name, variant=variant, seed=seed,
        regret=tuple(float(r) for r in regret_curve(values, bench.best_possible)), tau={},
        overhead_seconds=round(overhead, 4), total_seconds=round(time.perf_counter() - start, 3),
        n_trials=n_trials, best_config=dict(best[1]) if best else {},
        overhead_at_epoch=tuple(round(s, 5) for s in overhead_at),
        train_seconds_at_epoch=tuple(round(s, 5) for s in train_at), train_seconds_source=source,
    )
