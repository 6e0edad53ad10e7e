"""NAdamW, its warmup-cosine schedule, the NAdamW hyperparameter list, and a preset-driven LightningModule.

Also: building your own ordered list from trials (:mod:`fms_lightning.optim.lists`)
and list sweeps, the first K presets as K trials (:mod:`fms_lightning.optim.sweep`,
which imports Lightning).

``NAdamWListModule`` imports Lightning; it is loaded on first access so that the
optimizer and the list can be used without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fms_lightning.optim.list_trials import ListTrials, WorkloadSpec, read_trials_csv, read_trials_studies
from fms_lightning.optim.lists import build_list, greedy_order, leave_one_workload_out, list_cost, write_list_yaml
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
    "ListTrials",
    "WorkloadSpec",
    "read_trials_csv",
    "read_trials_studies",
    "list_cost",
    "greedy_order",
    "build_list",
    "leave_one_workload_out",
    "write_list_yaml",
]


def __getattr__(name: str) -> Any:
    if name == "NAdamWListModule":
        from fms_lightning.optim.module import NAdamWListModule

        return NAdamWListModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
