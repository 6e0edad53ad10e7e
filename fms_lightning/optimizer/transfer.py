"""Transfer between studies (paper Fig. 3): pretrain the surrogate on earlier runs, save and load it.

These are the bodies of :meth:`FMSOptimizer.pretrain`, :meth:`FMSOptimizer.save_surrogate`
and :meth:`FMSOptimizer.load_surrogate`, and the check that a saved state fits an optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.dataset import training_rows
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer

if TYPE_CHECKING:
    from fms_lightning.optimizer.core import FMSOptimizer

__all__ = ["pretrain", "save_surrogate", "load_surrogate", "check_state"]


def check_state(opt: FMSOptimizer, state: Mapping[str, Any]) -> None:
    """Refuse a state saved by another method or GMN training mode.

    Raises:
        ConfigurationError: Naming the saved and the current setting.
    """
    if state.get("method", opt.method.value) != opt.method.value:
        raise ConfigurationError(
            f"State was saved with method={state.get('method')!r}; this optimizer uses "
            f"{opt.method.value!r}. Construct the optimizer with the same method."
        )
    saved = state.get("gmn_training", GMNTraining.FROZEN.value)
    if opt.featurizer is not None and saved != opt.gmn_training.value:
        raise ConfigurationError(
            f"State was saved with gmn_training={saved!r}; this optimizer uses "
            f"{opt.gmn_training.value!r}. Construct the optimizer with gmn_training={saved!r}."
        )


def pretrain(opt: FMSOptimizer, trials: Iterable[Mapping[str, Any]], *, steps: int | None = None) -> None:
    """Learn the surrogate from earlier studies; afterwards every fit warm-starts from it.

    Args:
        opt: The optimizer.
        trials: Each ``{"config": ..., "curve": [y_1, ..., y_J], "weights": [W_0, ..., W_J]}``
            (values in the optimizer's ``mode``; ``weights`` needed by the fms methods).
        steps: Adam steps from scratch (default ``initial_steps``).

    Raises:
        ConfigurationError: If a trial is malformed.
    """
    data = []
    for k, t in enumerate(trials):
        curve = [float(v) if opt.mode == "max" else -float(v) for v in t.get("curve", [])]
        keys: list[str | None] = [None] * (len(curve) + 1)
        if opt.featurizer is not None:
            ws = t.get("weights")
            if ws is None or len(ws) != len(curve) + 1:
                raise ConfigurationError(
                    f"pretrain: trial {k} has {0 if ws is None else len(ws)} weights for "
                    f"{len(curve)} epochs; expected W_0..W_J ({len(curve) + 1} snapshots)."
                )
            keys = [opt.featurizer.add(t["config"], w) for w in ws]
        data.append((opt.space.encode([t["config"]])[0], curve, keys))
    if opt.featurizer is not None:
        opt.featurizer.flush()
    rows, y = training_rows(opt.layout, data, opt.featurizer.cache if opt.featurizer is not None else None)
    steps = opt.surrogate_config.initial_steps if steps is None else steps
    if isinstance(opt.featurizer, SnapshotFeaturizer):
        opt.featurizer.trunk_enabled = True
    opt.surrogate.fit(rows, y, steps=steps, from_scratch=True, seed=opt.seed)
    opt._pretrained = True
    opt._fitted_at = -1  # force a (warm) refit on the study's own data


def save_surrogate(opt: FMSOptimizer, path: str | Path) -> None:
    """Save the surrogate's parameters (and the weight encoder) to ``path``."""
    enc = None
    if opt.featurizer is not None and opt.featurizer.encoder is not None:
        enc = opt.featurizer.encoder.state_dict()
    torch.save({"method": opt.method.value, "surrogate": opt.surrogate.state_dict(), "encoder": enc}, path)


def load_surrogate(opt: FMSOptimizer, path: str | Path) -> None:
    """Load parameters saved by :func:`save_surrogate` (``weights_only=True``); later fits warm-start.

    Raises:
        ConfigurationError: For another method's surrogate, or an encoder that cannot change now.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("method") != opt.method.value:
        raise ConfigurationError(
            f"{str(path)!r} holds a {state.get('method')!r} surrogate; this optimizer uses "
            f"{opt.method.value!r}."
        )
    if opt.featurizer is not None and state.get("encoder") is not None:
        if len(opt._trials):
            raise ConfigurationError(
                "load_surrogate() would change the weight encoder after trials were observed; "
                "load the surrogate before the first suggest()."
            )
        if opt.featurizer.encoder is None:  # a lazily built encoder (FLAT): build it first
            raise ConfigurationError(
                "load_surrogate() cannot restore a FLAT encoder before it has seen a graph; pass "
                "encoder=FlatEncoder(reference_graph, ...) to the optimizer."
            )
        if isinstance(opt.featurizer, SnapshotFeaturizer):
            opt.featurizer.load_encoder(state["encoder"])  # node states belong to the old trunk
        else:
            opt.featurizer.encoder.load_state_dict(state["encoder"])
            opt.featurizer.cache.clear()  # embeddings belong to the old encoder version
            opt._start_keys.clear()
    opt.surrogate.load_state_dict(state["surrogate"])
    opt._pretrained, opt._fitted_at = True, -1
