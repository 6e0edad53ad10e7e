"""FMSTuner: Forecasting Model Search with Lightning, resumable, over a model hub.

- :mod:`~fms_lightning.tuner.core`: :class:`FMSTuner`.
- :mod:`~fms_lightning.tuner.segment`: one trial trained from its checkpoint to a target
  epoch (on a worker), and the trials' starting weights ``W_{i,0}`` and graphs.
- :mod:`~fms_lightning.tuner.sync`: the study's rows and the optimizer (resume, tell, pretrain).
- ``_loop``: one ``fit`` call (executor, pacing, retries, failures); ``_settings``: argument checks.

The names load on first use, so importing a submodule does not import the tuner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fms_lightning.tuner._lightning import load_hub_weights
    from fms_lightning.tuner._settings import _check_extra_kwargs
    from fms_lightning.tuner.core import FMSTuner, _run_segment

__all__ = ["FMSTuner", "load_hub_weights"]

_LAZY = {
    "FMSTuner": "fms_lightning.tuner.core",
    "_run_segment": "fms_lightning.tuner.core",
    "load_hub_weights": "fms_lightning.tuner._lightning",
    "_check_extra_kwargs": "fms_lightning.tuner._settings",  # recipe_tune checks a recipe's extra options with it
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fms_lightning.tuner' has no attribute {name!r}")
