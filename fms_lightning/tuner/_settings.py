"""FMSTuner's arguments: validated up front, and compared with a study's on resume."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fms_lightning._validate import check_int, check_mode
from fms_lightning.errors import ConfigurationError
from fms_lightning.hub import ModelHub
from fms_lightning.optimizer import FMSOptimizer
from fms_lightning.optimizer._options import Method, parse_method
from fms_lightning.space import SearchSpace
from fms_lightning.study import Study
from fms_lightning.tuner._lightning import _DataModuleFromClass

__all__ = ["check_arguments", "check_study", "resolve_fit_while_training", "settings_diff"]


def check_arguments(
    *, build: Any, datamodule: Any, space: Any, hub: ModelHub | None, monitor: Any, mode: Any, budget_epochs: Any,
    max_epochs_per_trial: Any, method: Any, executor: Any, max_concurrent: Any, max_lost_worker_retries: Any,
    max_consecutive_failures: Any, optimizer_kwargs: Mapping[str, Any] | None, trainer_kwargs: Mapping[str, Any] | None,
    study_dir: Any, storage: Any,
) -> None:
    """Refuse bad :class:`~fms_lightning.tuner.FMSTuner` arguments before anything runs.

    ``datamodule`` is the resolved factory (``datamodule_factory``).

    Raises:
        ConfigurationError: Naming the argument, what it was and what was expected.
    """
    from fms_lightning._ray import check_executor

    if not callable(build):
        raise ConfigurationError(f"build must be callable as build(config, hub_entry), got {build!r}.")
    if not isinstance(space, SearchSpace):
        raise ConfigurationError(f"space must be a SearchSpace, got {type(space).__name__}.")
    if isinstance(datamodule, _DataModuleFromClass):
        _check_datamodule_class(datamodule, space)
    check_mode(mode)
    if not isinstance(monitor, str) or not monitor:
        raise ConfigurationError(f"monitor must name a logged metric such as 'val_acc', got {monitor!r}.")
    check_int(max_epochs_per_trial, "max_epochs_per_trial", minimum=1)
    if isinstance(budget_epochs, bool) or not isinstance(budget_epochs, int) or budget_epochs < 1:
        raise ConfigurationError(f"budget_epochs must be at least one epoch (an integer >= 1), got {budget_epochs!r}.")
    parse_method(method)
    check_executor(executor, max_concurrent)
    if executor == "local" and max_concurrent != 1:
        raise ConfigurationError(
            f"max_concurrent={max_concurrent} needs executor='ray'; the local executor trains one segment at a time."
        )
    check_int(max_lost_worker_retries, "max_lost_worker_retries", minimum=0)
    check_int(max_consecutive_failures, "max_consecutive_failures", minimum=1)
    _check_extra_kwargs(optimizer_kwargs, trainer_kwargs)
    for name, value in (("study_dir", study_dir), ("storage", storage)):
        if value is not None and not os.fspath(value).strip():
            raise ConfigurationError(f"{name} must name a folder (or, for storage, a URL), got {value!r}.")
    if space.hub_name is not None:
        if hub is None:
            raise ConfigurationError(
                f"The search space has a hub dimension {space.hub_name!r} but no hub was given; pass hub=ModelHub(...)."
            )
        missing = [v for v in space[space.hub_name].values if v not in hub.names]  # type: ignore[attr-defined]
        if missing:
            raise ConfigurationError(f"Hub dimension values {missing} are not entries of the hub {hub.names}.")


def resolve_fit_while_training(value: Any, executor: str, method: str) -> bool:
    """Whether the tuner fits the surrogate while each segment trains (``FMSTuner(fit_while_training=...)``).

    ``"auto"`` is on for the local executor with a model-based method where processes can fork.

    Raises:
        ConfigurationError: For a value other than True, False or ``"auto"``; True with
            ``executor="ray"`` or where processes cannot fork.
    """
    from fms_lightning.tuner._ahead import fork_available

    if isinstance(value, str) and value == "auto":
        return executor == "local" and parse_method(method) is not Method.RANDOM and fork_available()
    if not isinstance(value, bool):
        raise ConfigurationError(f"fit_while_training must be True, False or 'auto', got {value!r}.")
    if value and executor != "local":
        raise ConfigurationError(
            f"fit_while_training=True is for executor='local'; with executor={executor!r} the tuner already suggests "
            "while segments train. Pass False or 'auto'."
        )
    if value and not fork_available():
        raise ConfigurationError(
            "fit_while_training=True fits the surrogate in a forked process, and this platform cannot fork; "
            "pass False or 'auto'."
        )
    return value


def _check_extra_kwargs(optimizer_kwargs: Mapping[str, Any] | None, trainer_kwargs: Mapping[str, Any] | None) -> None:
    """Refuse unknown or mistyped FMSOptimizer / Trainer options before anything runs."""
    from fms_lightning._kwargs import check_kwargs, check_trainer_kwargs

    check_kwargs(FMSOptimizer, dict(optimizer_kwargs or {}), where="optimizer", what="an FMSOptimizer option",
                 reserved=("space", "max_epochs", "method", "mode", "seed"),
                 reserved_hint="the tuner passes it; use FMSTuner's (or the recipe's) own key of that name "
                 "(max_epochs_per_trial for max_epochs)")
    check_trainer_kwargs(dict(trainer_kwargs or {}), reserved=("max_epochs",), construct=False,
                         reserved_hint="the tuner trains each segment to its target epoch; use max_epochs_per_trial")


def _check_datamodule_class(factory: _DataModuleFromClass, space: SearchSpace) -> None:
    """Refuse a DataModule class whose required ``__init__`` arguments the space does not give.

    Raises:
        ConfigurationError: Naming the missing arguments.
    """
    params = inspect.signature(factory.cls.__init__).parameters
    missing = [n for n in factory.names if params[n].default is inspect.Parameter.empty and n not in space.names]
    if missing:
        raise ConfigurationError(
            f"datamodule={factory.cls.__name__} is a class, which the tuner instantiates per trial with the "
            f"config values its __init__ names, but it requires {missing}, which the search space "
            f"{list(space.names)} does not have. Give those arguments defaults, or pass "
            f"datamodule=lambda config: {factory.cls.__name__}(...)."
        )


def settings_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"max_epochs_per_trial is 10 in the study, 8 here"``, for each setting that differs."""
    parts = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if key == "space" and isinstance(old, Mapping) and isinstance(new, Mapping):
            dims = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            parts.append(f"the search space differs in {', '.join(repr(d) for d in dims)} "
                         f"(study: {[old.get(d) for d in dims]}, here: {[new.get(d) for d in dims]})")
        else:
            parts.append(f"{key} is {old!r} in the study, {new!r} here")
    return "; ".join(parts)


def check_study(study: Study, settings: Mapping[str, Any], study_dir: Path) -> None:
    """Refuse a study made with other settings, or by a version whose trials cannot resume; record ours.

    Raises:
        ConfigurationError: Naming the settings that differ, or the version problem.
    """
    stored = study.get_meta("tuner_settings")
    if stored is not None and stored != settings:
        raise ConfigurationError(
            f"The study at {str(study_dir)!r} was created with other settings: "
            f"{settings_diff(stored, settings)}. Use a new study_dir, or the study's settings to continue it."
        )
    if study.schema_version < 2 and study.trials(source="tuner"):
        raise ConfigurationError(
            f"The study at {str(study_dir)!r} was written by an earlier development version of "
            "fms-lightning that did not record committed checkpoints, so its trials cannot be resumed; "
            "use a new study_dir (WeightSnapshot runs in it can still be read with Study)."
        )
    study.set_meta("tuner_settings", dict(settings))
