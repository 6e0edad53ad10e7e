"""NAdamW, its warmup-cosine schedule, the NAdamW hyperparameter list, and a preset-driven LightningModule.

``NAdamWListModule`` imports Lightning; it is loaded on first access so that the
optimizer and the list can be used without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fms_lightning.optim.nadamw import NAdamW
from fms_lightning.optim.presets import (
    NADAMW_LIST,
    PRESET_NAMES,
    NAdamWPoint,
    dump_hparam_list,
    get_preset,
    load_hparam_list,
)
from fms_lightning.optim.schedule import WarmupCosine, warmup_cosine

if TYPE_CHECKING:
    from fms_lightning.optim.module import NAdamWListModule

__all__ = [
    "NAdamW",
    "warmup_cosine",
    "WarmupCosine",
    "NADAMW_LIST",
    "PRESET_NAMES",
    "NAdamWPoint",
    "get_preset",
    "load_hparam_list",
    "dump_hparam_list",
    "NAdamWListModule",
]


def __getattr__(name: str) -> Any:
    if name == "NAdamWListModule":
        from fms_lightning.optim.module import NAdamWListModule

        return NAdamWListModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
