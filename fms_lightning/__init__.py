"""FMS Lightning: Forecasting Model Search and NAdamW lists for PyTorch Lightning."""

from __future__ import annotations

from fms_lightning.space import Choice, HubChoice, IntUniform, LogUniform, SearchSpace, Uniform

__version__ = "0.1.0"

__all__ = [
    "SearchSpace",
    "LogUniform",
    "Uniform",
    "IntUniform",
    "Choice",
    "HubChoice",
    "__version__",
]
