"""The optimizer's surrogate work: training rows, the fit schedule, candidate scoring and prediction.

Glossary: see ``fms_lightning.surrogate.dataset`` (x, j, Y_{i,j-1}, W_{i,j-1}) and
``fms_lightning.acquisition`` (EI_MF, eq. 5). These functions read and update an
:class:`~fms_lightning.optimizer.FMSOptimizer`; they are its internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fms_lightning.acquisition import Acquisition, ExpectedImprovementMF, HorizonExpectedImprovement
from fms_lightning.optimizer._options import config_key
from fms_lightning.surrogate.dataset import (
    add_forecast_rows, cap_rows, forecast_rows, impute_failures, make_row, training_rows,
)
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer
from fms_lightning.surrogate.weights import WeightFeaturizer
from fms_lightning.trial import TrialStatus

if TYPE_CHECKING:
    from fms_lightning.optimizer.core import FMSOptimizer

__all__ = ["training_data", "fit", "select", "predict"]


def training_data(opt: FMSOptimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate's rows: observations, imputed failures, capped, then look-ahead rows (ei-horizon).

    Returns:
        ``(rows, y)``, `(n, layout.width)` and `(n,)`, in internal units (larger is better).
    """
    trials = opt._trials.values()
    xs = opt.space.encode([t.config for t in trials])
    emb = None
    if opt.featurizer is not None:
        opt.featurizer.flush()
        emb = opt.featurizer.cache
    data = [(x, t.curve, t.keys) for x, t in zip(xs, trials)]
    rows, y = training_rows(opt.layout, data, emb)
    if y.numel():
        failed = [opt._row(t, x, t.failed_at) for x, t in zip(xs, trials) if t.failed_at is not None]
        rows, y = impute_failures(rows, y, failed)
    cap = opt.surrogate_config.max_train_rows
    rows, y = cap_rows(rows, y, [len(t.curve) for t in trials], cap, opt.seed)
    if opt.acquisition is Acquisition.EI_HORIZON and y.numel():
        ahead, y_ahead = forecast_rows(opt.layout, data, emb)
        rows, y = add_forecast_rows(rows, y, ahead, y_ahead, cap, opt.seed)
    return rows, y


def fit(opt: FMSOptimizer) -> None:
    """(Re)fit the surrogate if its data changed: from scratch while ``<= full_fit_until`` observations, else refine.

    After ``pretrain()`` (transfer) the fits of that first phase warm-start from the pretrained
    parameters but keep the from-scratch step count, so the surrogate adapts to the new task
    (with only ``refine_steps`` it stayed tied to the source task: regret@25 0.136 against 0.045
    on probe seeds 200-203 of ``zoo-mirror``).
    """
    n_obs, version = opt.n_observations, opt._trials.version
    population = None
    if isinstance(opt.featurizer, WeightFeaturizer):  # standardise ξ(W) over every known snapshot and hub checkpoint
        opt.featurizer.flush()
        population = torch.stack([opt.featurizer.cache[k] for k in sorted(opt.featurizer.cache)])
    rows, y = training_data(opt)
    cfg = opt.surrogate_config
    new_data = version != opt._fitted_at or opt.surrogate.model is None
    first_phase = new_data and n_obs <= cfg.full_fit_until
    warm = first_phase and _warm_starts(opt)
    scratch = first_phase and not opt._pretrained and not warm
    steps = 0 if not new_data else (
        cfg.initial_warm_steps if warm else cfg.initial_steps if first_phase else cfg.refine_steps
    )
    if new_data and opt._use_fit_ahead():  # fit_ahead() fit the parameters: only condition on the new data
        steps, scratch = 0, False
    if isinstance(opt.featurizer, SnapshotFeaturizer):  # which from-scratch fits train the GMN trunk
        k = opt.gmn_trunk_fits
        opt.featurizer.trunk_enabled = k is None or n_obs > cfg.full_fit_until - k
    opt.surrogate.fit(
        rows, y, steps=steps, from_scratch=scratch, seed=opt.seed * 100_003 + n_obs, weight_population=population
    )
    opt._fitted_at = version


def _warm_starts(opt: FMSOptimizer) -> bool:
    """Whether a fit of the first phase warm-starts from the previous one (``initial_warm_steps``).

    Not after ``pretrain()`` (those fits adapt with ``initial_steps``), and not when the GMN
    trunk trains (``gmn_training="full"`` trains it in from-scratch fits only).
    """
    if opt.surrogate_config.initial_warm_steps is None or opt.surrogate.model is None or opt._pretrained:
        return False
    return not (isinstance(opt.featurizer, SnapshotFeaturizer) and opt.featurizer.mode is GMNTraining.FULL)


def select(opt: FMSOptimizer, new: list[dict[str, Any]]) -> int | dict[str, Any]:
    """The EI argmax over the paused trials (the id) and the new configs (the config).

    Raises:
        SurrogateError: If the surrogate cannot be fit or queried.
    """
    trials = opt._trials
    seen = {config_key(t.config) for t in trials.values()}
    unseen = [c for c in new if config_key(c) not in seen]
    new = unseen or new  # a config that has a trial is represented by that trial (finite spaces)
    new_keys = [opt._start_key(c) for c in new]  # hub checkpoints W_{i,0}, loaded once per entry
    fit(opt)
    paused = trials.with_status(TrialStatus.PAUSED)
    running = [t for _, t in trials.with_status(TrialStatus.RUNNING)]
    xs = opt.space.encode([t.config for _, t in paused] + [t.config for t in running] + new)
    horizon = None
    if opt.acquisition is Acquisition.EI_HORIZON:  # the deepest budget observed: forecasts stay on data
        horizon = max(len(t.curve) for t in trials.values())
    rows = [opt._row(t, xs[k], len(t.curve) + 1, None if horizon is None else max(horizon, len(t.curve) + 1))
            for k, (_, t) in enumerate(paused)]
    fantasy = [opt._row(t, xs[len(paused) + k], t.target) for k, t in enumerate(running)]
    off = len(paused) + len(running)
    rows += [make_row(opt.layout, xs[off + k], 1, [], opt._emb(key), horizon=horizon)
             for k, key in enumerate(new_keys)]
    budgets = torch.tensor([len(t.curve) + 1 for _, t in paused] + [1] * len(new))
    mean, std = opt.surrogate.predict(torch.stack(rows), fantasy_rows=torch.stack(fantasy) if fantasy else None)
    ob = torch.tensor([j for t in trials.values() for j in range(1, len(t.curve) + 1)])
    ov = torch.tensor([y for t in trials.values() for y in t.curve], dtype=torch.float64)
    ei = _acquisition(ob, ov, horizon, log=False)(mean, std, budgets)
    if float(ei.max()) <= 0.0:  # EI underflowed everywhere: rank by log EI instead
        ei = _acquisition(ob, ov, horizon, log=True)(mean, std, budgets)
    k = int(torch.argmax(ei))
    return paused[k][0] if k < len(paused) else new[k - len(paused)]


def _acquisition(ob: torch.Tensor, ov: torch.Tensor, horizon: int | None, *, log: bool) -> Any:
    """``acq(mean, std, budgets)``: EI_MF at the candidates' budgets, or the horizon EI."""
    if horizon is None:
        return ExpectedImprovementMF(ob, ov, log=log)
    acq = HorizonExpectedImprovement(ov, log=log)
    return lambda mean, std, budgets: acq(mean, std)


def predict(opt: FMSOptimizer, configs: list[dict[str, Any]], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of y at ``epoch`` for each config, in user units (see :meth:`FMSOptimizer.predict`)."""
    known = opt._trials.longest_by_config()
    trials = [known.get(config_key(c)) for c in configs]
    start_keys = [None if t is not None else opt._start_key(c) for c, t in zip(configs, trials)]
    fit(opt)
    xs = opt.space.encode(configs)
    rows = []
    for x, t, skey in zip(xs, trials, start_keys):
        curve = [] if t is None else t.curve[: epoch - 1]
        wkey = skey if t is None else t.keys[len(curve)]
        rows.append(make_row(opt.layout, x, len(curve) + 1, curve, opt._emb(wkey), horizon=epoch))
    mean, std = opt.surrogate.predict(torch.stack(rows))
    return (mean if opt.mode == "max" else -mean), std
