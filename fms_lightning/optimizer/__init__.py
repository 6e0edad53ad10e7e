"""FMSOptimizer: the ask/tell core of Forecasting Model Search, and its vocabulary.

- :mod:`~fms_lightning.optimizer.core`: :class:`FMSOptimizer` (suggest, observe, predict).
- ``_registry``: the trials and their status machine; ``_model``: training rows, the fit
  schedule and the EI argmax; ``_state``: trial queries and the saved state.
- :mod:`~fms_lightning.optimizer.transfer`: pretrain on earlier studies, save and load the surrogate.
"""

from __future__ import annotations

from fms_lightning.optimizer._options import DEFAULT_GMN_TRAINING, Method
from fms_lightning.optimizer.core import FMSOptimizer
from fms_lightning.trial import Best, Suggestion, TrialInfo, TrialStatus

__all__ = ["FMSOptimizer", "Method", "Suggestion", "TrialInfo", "TrialStatus", "Best", "DEFAULT_GMN_TRAINING"]
