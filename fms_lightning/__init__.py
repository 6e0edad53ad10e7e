"""FMS Lightning: Forecasting Model Search and NAdamW lists for PyTorch Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fms_lightning.space import Choice, HubChoice, IntUniform, LogUniform, SearchSpace, Uniform

if TYPE_CHECKING:
    from fms_lightning.hub import HubEntry, ModelHub
    from fms_lightning.optimizer import FMSOptimizer, Suggestion
    from fms_lightning.tuner import FMSTuner

__version__ = "0.1.0"

__all__ = [
    "SearchSpace",
    "LogUniform",
    "Uniform",
    "IntUniform",
    "Choice",
    "HubChoice",
    "FMSOptimizer",
    "Suggestion",
    "FMSTuner",
    "ModelHub",
    "HubEntry",
    "__version__",
]

# Heavy modules (gpytorch, torch_geometric, Lightning) load on first use, not at `import fms_lightning`.
_LAZY = {
    "FMSOptimizer": "fms_lightning.optimizer",
    "Suggestion": "fms_lightning.optimizer",
    "FMSTuner": "fms_lightning.tuner",
    "ModelHub": "fms_lightning.hub",
    "HubEntry": "fms_lightning.hub",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fms_lightning' has no attribute {name!r}")
