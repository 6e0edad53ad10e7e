"""Fitting ahead: the surrogate fit made while trials train, and its record.

These functions read and update an :class:`~fms_lightning.optimizer.FMSOptimizer`; they
are its internals behind :meth:`FMSOptimizer.fit_ahead`. The record ``opt._ahead`` is
``(version, {running trial id: its epochs then})`` at the time of the fit, or None;
``opt._conditioned_at`` is the registry version the last fit only conditioned on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fms_lightning.errors import ConfigurationError
from fms_lightning.optimizer import _model
from fms_lightning.optimizer._options import Method
from fms_lightning.trial import TrialStatus

if TYPE_CHECKING:
    from fms_lightning.optimizer.core import FMSOptimizer

__all__ = ["applies", "fit", "use", "result", "adopt", "encode", "decode"]

Record = tuple[int, dict[int, int]]


def encode(ahead: Record | None) -> list[Any] | None:
    """The record as plain data (for a saved state or a pipe)."""
    return None if ahead is None else [ahead[0], sorted(ahead[1].items())]


def decode(saved: list[Any] | None) -> Record | None:
    """The record from :func:`encode`'s output."""
    return None if saved is None else (int(saved[0]), {int(t): int(n) for t, n in saved[1]})


def applies(opt: FMSOptimizer) -> bool:
    """Whether :meth:`FMSOptimizer.fit_ahead` would fit or keep anything now (see there)."""
    n = opt.n_observations
    return opt.method is not Method.RANDOM and n > 0 and n >= opt.surrogate_config.full_fit_until


def fit(opt: FMSOptimizer) -> bool:
    """The body of :meth:`FMSOptimizer.fit_ahead`."""
    if not applies(opt):
        return False
    version = opt._trials.version
    fitted = opt.surrogate.model is None or opt._fitted_at != version or opt._conditioned_at == version
    if fitted:
        opt._ahead, opt._fitted_at = None, -1  # fit to this version as a suggest() with new data would
        _model.fit(opt)
        opt._conditioned_at = -1
    opt._ahead = (version, {tid: len(t.curve) for tid, t in opt._trials.with_status(TrialStatus.RUNNING)})
    return fitted


def use(opt: FMSOptimizer) -> bool:
    """Whether this fit only conditions on the new data with :meth:`FMSOptimizer.fit_ahead`'s parameters.

    True when the surrogate still holds them (no other fit, pretraining or loading since)
    and every new observation is one of the trials that were running then. The record is
    used up either way.
    """
    ahead, opt._ahead = opt._ahead, None
    if ahead is None or opt.surrogate.model is None or opt._fitted_at != ahead[0]:
        return False
    version, running = ahead
    grown = sum(len(opt._trials.get(tid).curve) - n for tid, n in running.items() if tid in opt._trials)
    if opt._trials.version - version != grown:  # other trials changed, or a running one failed
        return False
    opt._conditioned_at = opt._trials.version
    return True


def result(opt: FMSOptimizer) -> dict[str, Any]:
    """What :func:`fit` left, for :func:`adopt` in the process this one was forked from."""
    return {"version": opt._trials.version, "fitted_at": opt._fitted_at, "ahead": encode(opt._ahead),
            "surrogate": opt.surrogate.state_dict(), "loss": opt.surrogate.last_fit_loss,
            "steps": opt.surrogate.last_fit_steps}


def adopt(opt: FMSOptimizer, res: Mapping[str, Any]) -> None:
    """Install :func:`result` of a copy of ``opt``, as if :func:`fit` had run on ``opt``.

    Raises:
        ConfigurationError: If ``opt``'s data changed since the copy was made.
    """
    if int(res["version"]) != opt._trials.version:
        raise ConfigurationError(
            f"The surrogate was fit ahead on data version {res['version']}, but this optimizer is at "
            f"version {opt._trials.version}; adopt the fit before observing anything new."
        )
    params, model = res["surrogate"]["model"], opt.surrogate.model
    try:  # into the model in place when it has the same structure (no rebuild)
        if model is None or params is None:
            raise KeyError("no model")
        model.load_state_dict(params)
        if opt.surrogate.readout is not None:
            opt.surrogate.readout.prepare(train_trunk=False)
    except (KeyError, RuntimeError):
        opt.surrogate.load_state_dict(res["surrogate"])
    opt.surrogate.last_fit_loss, opt.surrogate.last_fit_steps = res["loss"], int(res["steps"])
    opt._fitted_at = int(res["fitted_at"])
    opt._ahead = decode(res["ahead"])
