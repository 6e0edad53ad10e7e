"""Run FMSTuner from an omegaconf recipe (``fms-lightning tune RECIPE [key=value ...]``).

A tuning recipe has one key per :class:`~fms_lightning.tuner.FMSTuner` argument
(the schema is read from its signature, so the two cannot drift), plus
``trusted_factories``, ``trust_hub_code`` and ``threads``
(``recipes/digits_hub.yaml`` is the embedded default)::

    study_dir: runs/digits_hub          # the study folder (continued if it exists)
    method: fms-gmn                     # fms-gmn | fms-flat | dyhpo | gp | random
    gmn_training: null                  # fms-gmn: frozen | readout | full (null: the default)
    seed: 0
    monitor: val_acc
    mode: max                           # min | max
    budget_epochs: 40
    max_epochs_per_trial: 8
    hub: digits                         # "digits" (embedded, built on first use), a hub folder, or null
    trusted_factories: []               # factories the hub folder's manifest may name ("pkg.mod:make_cnn")
    trust_hub_code: false               # let the manifest run any code (--trust-hub-code); trusted hubs only
    module: pkg.mod:build               # build(config, hub_entry) -> LightningModule
    datamodule: pkg.mod:make_dm         # a LightningDataModule class or config -> LightningDataModule
    search_space: {name: {type: ..., ...}}   # see SearchSpace.from_dict; hub values may be "all"
    optimizer: {}                       # extra FMSOptimizer options, e.g. n_candidates
    trainer: {}                         # extra lightning.Trainer options
    progress: true
    threads: null                       # torch intra-op threads for training (null: torch's default)
    surrogate_threads: 1                # torch threads while the surrogate fits and suggests (null: as training)
    fit_while_training: false           # fit the surrogate while each segment trains (local executor): true | false | auto
    executor: local                     # local | ray (pip install 'fms-lightning[ray]')
    max_concurrent: 1                   # segments at once (ray)
    storage: null                       # checkpoints/snapshots: a path or fsspec URL workers reach (null: study_dir)
    ray_address: null                   # the Ray cluster (null: RAY_ADDRESS, else a local one)
    max_consecutive_failures: 5         # stop after this many trials in a row fail
    resources_per_trial: null           # Ray resources of each segment (null: {num_cpus: 1})
    max_lost_worker_retries: 3          # re-runs of a segment whose Ray worker was lost

A hub folder's manifest names the factories that build its models. Only the
library's own factories and those listed in ``trusted_factories`` are imported;
any other is refused before it is imported, unless ``trust_hub_code: true``
(``fms-lightning tune --trust-hub-code``) says that the hub's code is trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fms_lightning._validate import check_int
from fms_lightning.errors import ConfigurationError
from fms_lightning.recipes import BUILTINS

__all__ = ["TuneRecipe", "validate_recipe", "run_tune_recipe", "tuner_from_recipe"]

#: Recipe keys whose FMSTuner argument has another name.
_RECIPE_KEY = {"build": "module", "space": "search_space", "trainer_kwargs": "trainer", "optimizer_kwargs": "optimizer"}
#: Recipe keys and types where the argument's annotation says less (a string to import, a block of options).
_RECIPE_TYPE: dict[str, Any] = {"module": str, "datamodule": str, "search_space": dict[str, Any], "hub": Any,
                                "trainer": dict[str, Any], "optimizer": dict[str, Any], "fit_while_training": Any}
#: Recipe defaults where the tuner has none, or another one.
_RECIPE_DEFAULT: dict[str, Any] = {
    "study_dir": "runs/study", "monitor": "val_acc", "mode": "max", "budget_epochs": 40, "max_epochs_per_trial": 8,
    "hub": "digits", "module": BUILTINS["tune.module"], "datamodule": BUILTINS["tune.datamodule"],
    "search_space": {}, "trainer": {}, "optimizer": {},
}
#: Keys of a recipe that are not tuner arguments: (type, default).
_RECIPE_ONLY: dict[str, tuple[Any, Any]] = {
    "trusted_factories": (list[str], []), "trust_hub_code": (bool, False), "threads": (Any, None),
}


def _tuner_parameters() -> list[inspect.Parameter]:
    """``FMSTuner.__init__``'s arguments (without ``self``); the recipe schema follows them."""
    from fms_lightning.tuner import FMSTuner

    return list(inspect.signature(FMSTuner.__init__).parameters.values())[1:]


def _recipe_type(annotation: Any) -> Any:
    """The omegaconf type of a tuner argument: ``int``, ``bool`` or ``str`` (also for a ``Literal``), else ``Any``."""
    if isinstance(annotation, type):
        return annotation if annotation in (int, bool, str) else Any
    text = str(annotation).replace(" ", "")
    if "None" in text.split("|"):  # optional: null is a value
        return Any
    first = text.split("|")[0]
    return {"int": int, "bool": bool, "str": str}.get(first, str if first.startswith("Literal[") else Any)


def _field(name: str, kind: Any, default: Any) -> tuple[str, Any, Any]:
    if isinstance(default, (dict, list)):
        return name, kind, dataclasses.field(default_factory=functools.partial(type(default), default))
    return name, kind, dataclasses.field(default=default)


@functools.cache
def _schema() -> type:
    """The recipe schema: one key per ``FMSTuner`` argument, plus :data:`_RECIPE_ONLY`."""
    fields = []
    for p in _tuner_parameters():
        key = _RECIPE_KEY.get(p.name, p.name)
        default = _RECIPE_DEFAULT.get(key, None if p.default is inspect.Parameter.empty else p.default)
        fields.append(_field(key, _RECIPE_TYPE.get(key, _recipe_type(p.annotation)), default))
    fields += [_field(key, kind, default) for key, (kind, default) in _RECIPE_ONLY.items()]
    schema = dataclasses.make_dataclass("TuneRecipe", fields)
    schema.__module__ = __name__
    schema.__doc__ = "The schema of a tuning recipe (from FMSTuner's arguments); omegaconf checks keys and types."
    return schema


def __getattr__(name: str) -> Any:
    if name == "TuneRecipe":  # built on first use: it imports the tuner
        return _schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_recipe(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """Check a recipe against :class:`TuneRecipe`.

    Raises:
        ConfigurationError: Naming the unknown key (and the accepted ones) or the
            key with a wrong type (and the expected type).
    """
    schema = _schema()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        detail = str(err).splitlines()[0].rstrip(".")
        fields = schema.__dataclass_fields__  # type: ignore[attr-defined]
        if key in fields:  # a known key with a value of the wrong type
            expected = getattr(fields[key].type, "__name__", str(fields[key].type))
            hint = f"expected a value of type {expected}"
        else:
            hint = f"accepted keys are {', '.join(fields)}"
        raise ConfigurationError(f"Bad tuning recipe key {key!r}: {detail}; {hint}.") from None
    if not merged.search_space:
        raise ConfigurationError("The recipe's search_space is empty (an override search_space={} replaces the whole "
                                 "space); give at least one dimension, see recipes/digits_hub.yaml for the format.")
    assert isinstance(merged, DictConfig)
    return merged


def _resolve_hub(spec: Any, seed: int, stream: TextIO, *, trusted_factories: Any = (),
                 trust_code: bool = False) -> Any:
    from fms_lightning.hub import ModelHub
    from fms_lightning.recipes import builtin

    if spec in (None, "", "none"):
        return None
    if spec == "digits":
        return builtin("hub.digits")(stream=stream)
    return ModelHub.from_directory(str(spec), trusted_factories=list(trusted_factories or ()), trust_code=trust_code)


def _datamodule_factory(obj: Any) -> Any:
    """A recipe's ``datamodule:`` object as FMSTuner takes it (see ``tuner._lightning.datamodule_factory``)."""
    from fms_lightning.tuner._lightning import datamodule_factory

    return datamodule_factory(obj)


def tuner_from_recipe(cfg: DictConfig | dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Validate a recipe and build its :class:`~fms_lightning.tuner.FMSTuner` (not run yet).

    Returns:
        ``(tuner, recipe)``: the tuner and the validated recipe as a plain dict.
    """
    from fms_lightning.hub import import_object
    from fms_lightning.space import SearchSpace
    from fms_lightning.tuner import FMSTuner

    rc = validate_recipe(cfg)
    plain = OmegaConf.to_container(rc, resolve=True)
    assert isinstance(plain, dict)
    if plain["threads"] is not None:
        import torch

        if not isinstance(plain["threads"], int) or plain["threads"] < 1:
            raise ConfigurationError(f"threads must be a positive integer or null, got {plain['threads']!r}.")
        torch.set_num_threads(plain["threads"])
    from fms_lightning.tuner._settings import _check_extra_kwargs

    _check_extra_kwargs(plain["optimizer"], plain["trainer"])  # before the hub is built or loaded
    check_int(plain["max_consecutive_failures"], "max_consecutive_failures", minimum=1)
    hub = _resolve_hub(plain["hub"], int(plain["seed"]), sys.stderr, trusted_factories=plain["trusted_factories"],
                       trust_code=bool(plain["trust_hub_code"]))
    spec = dict(plain["search_space"])
    for name, entry in spec.items():
        if isinstance(entry, dict) and entry.get("type") == "hub" and entry.get("values") == "all":
            if hub is None:
                raise ConfigurationError(f"search_space.{name} uses the hub's entries but the recipe has hub: null.")
            spec[name] = {**entry, "values": list(hub.names)}
    args = {p.name: plain[_RECIPE_KEY.get(p.name, p.name)] for p in _tuner_parameters()}
    args |= {"build": import_object(plain["module"]), "space": SearchSpace.from_dict(spec), "hub": hub,
             "datamodule": _datamodule_factory(import_object(plain["datamodule"]))}
    tuner = FMSTuner(**args)
    return tuner, plain


def run_tune_recipe(cfg: DictConfig | dict[str, Any], *, stream: TextIO | None = None) -> Any:
    """Validate a recipe, build the tuner and run it; prints the leaderboard and the winner.

    Returns:
        The :class:`~fms_lightning.result.TuneResult`.
    """
    stream = stream if stream is not None else sys.stdout
    tuner, plain = tuner_from_recipe(cfg)
    where = f", {plain['max_concurrent']} at a time on Ray" if plain["executor"] == "ray" else ""
    print(f"FMS ({plain['method']}) over {len(tuner.hub) if tuner.hub else 0} hub models, budget {plain['budget_epochs']} epochs"
          f"{where}, study {plain['study_dir']}", file=stream, flush=True)
    result = tuner.fit()
    print("\nLeaderboard (best epoch of each trial):", file=stream)
    print(result.format_leaderboard(), file=stream)
    cfg_text = ", ".join(f"{k}={v}" for k, v in result.best_config.items())
    print(f"\nBest: {plain['monitor']}={result.best_value:.4f} at epoch {result.best_epoch} of trial "
          f"{result.best_trial_id}, hub model {result.best_hub_entry!r}\n      config: {cfg_text}", file=stream)
    print(f"Budget used: {result.budget_used} epochs. Plot: {result.plot}. Best weights: {result.best_checkpoint}",
          file=stream)
    print(f"Export them: fms-lightning export {plain['study_dir']} OUT_DIR", file=stream)
    print(f"TensorBoard: tensorboard --logdir {plain['study_dir']}/tensorboard", file=stream, flush=True)
    return result
