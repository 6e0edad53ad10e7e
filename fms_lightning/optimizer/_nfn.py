"""The weight encoder of ``method="fms-nfn"``: an NFN of the hub's one architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fms_lightning.errors import ConfigurationError
from fms_lightning.space import SearchSpace

__all__ = ["nfn_encoder"]


def nfn_encoder(
    space: SearchSpace,
    starting_weights_fn: Callable[[dict[str, Any]], Any],
    model_factory: Callable[[dict[str, Any]], nn.Module] | None,
    encoder: nn.Module | None,
    seed: int,
) -> nn.Module:
    """The NFN of ``method="fms-nfn"``, after checking that every hub member shares its architecture.

    Every member's starting weights are read once here (the optimizer reads them anyway); the
    reference architecture is ``model_factory(config)`` when given (its chain is then verified by
    tracing), else the first member's state dict.

    Raises:
        ConfigurationError: naming the members whose architecture differs, or the first layer
            that is not part of a plain chain.
    """
    from fms_lightning.surrogate.weights import load_weights
    from fms_lightning.weightspace import NFNEncoder, check_same_architecture

    base = space.sample(1, rng=np.random.default_rng(seed))[0]
    hub = space.hub_name
    configs = {str(v): {**base, hub: v} for v in space[hub].values} if hub else {"(fresh initialisation)": base}
    members = {name: load_weights(starting_weights_fn(dict(cfg))) for name, cfg in configs.items()}
    check_same_architecture(members)
    first = next(iter(configs))
    if encoder is None:
        reference = model_factory(dict(configs[first])) if model_factory is not None else members[first]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = NFNEncoder(reference)
    spec = getattr(encoder, "spec", None)
    if spec is None or not callable(getattr(encoder, "graph_fn", None)):
        raise ConfigurationError(f"method='fms-nfn' needs a weightspace.NFNEncoder, got {type(encoder).__name__}.")
    spec.check(members[first], what=f"hub member {first!r}")
    return encoder
