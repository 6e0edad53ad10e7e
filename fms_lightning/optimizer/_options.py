"""The optimizer's choices: its methods, the GMN training mode, default encoders and thread capping."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fms_lightning._threads import capped_threads
from fms_lightning.errors import ConfigurationError
from fms_lightning.surrogate.readout import GMNTraining, SnapshotFeaturizer
from fms_lightning.surrogate.weights import GraphFn, WeightFeaturizer, model_graph_fn

__all__ = ["Method", "DEFAULT_GMN_TRAINING", "Weights"]

Weights = Mapping[str, torch.Tensor] | str | Path

DEFAULT_GMN_TRAINING = GMNTraining.READOUT

_FLAT_OUT_DIM = 64


class Method(str, Enum):
    """The optimizer's methods: FMS with a GMN, NFN or FLAT weight encoder, DyHPO, a plain GP, random search."""

    FMS_GMN = "fms-gmn"
    FMS_FLAT = "fms-flat"
    FMS_NFN = "fms-nfn"
    DYHPO = "dyhpo"
    GP = "gp"
    RANDOM = "random"

    @property
    def uses_weights(self) -> bool:
        return self in (Method.FMS_GMN, Method.FMS_FLAT, Method.FMS_NFN)

    @property
    def trains_encoder(self) -> bool:
        """Whether ``gmn_training`` may train the weight encoder in the loop (GMN and NFN)."""
        return self in (Method.FMS_GMN, Method.FMS_NFN)


def parse_method(method: str | Method) -> Method:
    """``method`` as a :class:`Method`.

    Raises:
        ConfigurationError: For an unknown method (the message lists the valid ones).
    """
    try:
        return Method(method)
    except ValueError as err:
        raise ConfigurationError(
            f"Unknown method {method!r}; valid methods are {[m.value for m in Method]}."
        ) from err


def config_key(config: Mapping[str, Any]) -> str:
    """A hashable identity of a config (the same values give the same key)."""
    return repr(sorted(config.items()))


def resolve_gmn_training(method: Method, value: str | GMNTraining | None, encoder: nn.Module | None) -> GMNTraining:
    """The GMN training mode: only ``"fms-gmn"`` and ``"fms-nfn"`` train their encoder; None picks the default."""
    if value is None:
        if not method.trains_encoder or (encoder is not None and not callable(getattr(encoder, "node_states", None))):
            return GMNTraining.FROZEN
        return DEFAULT_GMN_TRAINING
    try:
        mode = GMNTraining(value)
    except ValueError as err:
        raise ConfigurationError(
            f"gmn_training={value!r} is unknown; expected one of {[m.value for m in GMNTraining]}."
        ) from err
    if mode is not GMNTraining.FROZEN and not method.trains_encoder:
        raise ConfigurationError(
            f"gmn_training={mode.value!r} with method={method.value!r}; only method='fms-gmn' or 'fms-nfn' "
            f"trains its weight encoder. Pass gmn_training='frozen' or leave it unset."
        )
    return mode


def surrogate_threads(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an optimizer method with ``self.surrogate_threads`` torch threads (the caller's count is restored)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with capped_threads(self.surrogate_threads):
            return method(self, *args, **kwargs)

    return wrapper


def default_encoder(method: Method, seed: int) -> tuple[nn.Module | Callable[[Any], nn.Module], int | None]:
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


def make_featurizer(
    method: Method, gmn_training: GMNTraining, seed: int, *, encoder: nn.Module | None, graph_fn: GraphFn | None,
    model_factory: Callable[[dict[str, Any]], nn.Module] | None, starting_weights_fn: Any,
) -> WeightFeaturizer | SnapshotFeaturizer | None:
    """The weight featurizer of an fms method (None for the others): frozen, or trained with the GMN.

    Raises:
        ConfigurationError: If an fms method lacks ``graph_fn`` (or ``model_factory``) or ``starting_weights_fn``.
    """
    if not method.uses_weights:
        return None
    if graph_fn is None and model_factory is not None:
        graph_fn = model_graph_fn(model_factory)
    if graph_fn is None or starting_weights_fn is None:
        raise ConfigurationError(
            f"method={method.value!r} reads checkpointed weights and needs graph_fn(config, "
            f"state_dict) (or model_factory(config)) and starting_weights_fn(config); pass them, "
            f"or use method='dyhpo'."
        )
    enc, out_dim = (encoder, None) if encoder is not None else default_encoder(method, seed)
    if gmn_training is GMNTraining.FROZEN:
        return WeightFeaturizer(enc, graph_fn, out_dim=out_dim)
    return SnapshotFeaturizer(enc, graph_fn, mode=gmn_training)  # type: ignore[arg-type]
