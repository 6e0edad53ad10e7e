"""Run FMSTuner from an omegaconf recipe (``fms-lightning tune RECIPE [key=value ...]``).

A tuning recipe has exactly these keys (``recipes/digits_hub.yaml`` is the
embedded default)::

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
    executor: local                     # local | ray (pip install 'fms-lightning[ray]')
    max_concurrent: 1                   # segments at once (ray)
    storage: null                       # checkpoints/snapshots: a path or fsspec URL workers reach (null: study_dir)
    ray_address: null                   # the Ray cluster (null: RAY_ADDRESS, else a local one)
    max_consecutive_failures: 5         # stop after this many trials in a row fail

A hub folder's manifest names the factories that build its models. Only the
library's own factories and those listed in ``trusted_factories`` are imported;
any other is refused before it is imported, unless ``trust_hub_code: true``
(``fms-lightning tune --trust-hub-code``) says that the hub's code is trusted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fms_lightning.errors import ConfigurationError

__all__ = ["TuneRecipe", "validate_recipe", "run_tune_recipe", "tuner_from_recipe"]


@dataclass
class TuneRecipe:
    """The schema of a tuning recipe; omegaconf checks keys and types against it."""

    study_dir: str = "runs/study"
    method: str = "fms-gmn"
    gmn_training: Any = None
    seed: int = 0
    monitor: str = "val_acc"
    mode: str = "max"
    budget_epochs: int = 40
    max_epochs_per_trial: int = 8
    hub: Any = "digits"
    trusted_factories: list[str] = field(default_factory=list)
    trust_hub_code: bool = False
    module: str = "fms_lightning.examples.digits_hub:build_hub_classifier"
    datamodule: str = "fms_lightning.examples.digits_hub:target_datamodule"
    search_space: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    threads: Any = None
    surrogate_threads: Any = 1
    executor: str = "local"
    max_concurrent: int = 1
    storage: Any = None
    ray_address: Any = None
    max_consecutive_failures: int = 5


def validate_recipe(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """Check a recipe against :class:`TuneRecipe`.

    Raises:
        ConfigurationError: Naming the unknown key (and the accepted ones) or the
            key with a wrong type (and the expected type).
    """
    schema = OmegaConf.structured(TuneRecipe)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        detail = str(err).splitlines()[0].rstrip(".")
        fields = TuneRecipe.__dataclass_fields__
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

    if spec in (None, "", "none"):
        return None
    if spec == "digits":
        from fms_lightning.examples.digits_hub import digits_hub

        return digits_hub(stream=stream)
    return ModelHub.from_directory(str(spec), trusted_factories=list(trusted_factories or ()), trust_code=trust_code)


def _datamodule_factory(obj: Any) -> Any:
    """A recipe's ``datamodule:`` object as FMSTuner takes it (see ``segment.datamodule_factory``)."""
    from fms_lightning.segment import datamodule_factory

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
    from fms_lightning.tuner import _check_extra_kwargs

    _check_extra_kwargs(plain["optimizer"], plain["trainer"])  # before the hub is built or loaded
    if isinstance(plain["max_consecutive_failures"], bool) or plain["max_consecutive_failures"] < 1:
        raise ConfigurationError(
            f"max_consecutive_failures must be an integer >= 1, got {plain['max_consecutive_failures']!r}."
        )
    hub = _resolve_hub(plain["hub"], int(plain["seed"]), sys.stderr, trusted_factories=plain["trusted_factories"],
                       trust_code=bool(plain["trust_hub_code"]))
    spec = dict(plain["search_space"])
    for name, entry in spec.items():
        if isinstance(entry, dict) and entry.get("type") == "hub" and entry.get("values") == "all":
            if hub is None:
                raise ConfigurationError(f"search_space.{name} uses the hub's entries but the recipe has hub: null.")
            spec[name] = {**entry, "values": list(hub.names)}
    space = SearchSpace.from_dict(spec)
    build = import_object(plain["module"])
    datamodule = _datamodule_factory(import_object(plain["datamodule"]))
    tuner = FMSTuner(
        build, datamodule, space, hub, monitor=plain["monitor"], mode=plain["mode"],
        budget_epochs=int(plain["budget_epochs"]), max_epochs_per_trial=int(plain["max_epochs_per_trial"]),
        method=plain["method"], study_dir=plain["study_dir"], seed=int(plain["seed"]),
        trainer_kwargs=plain["trainer"], optimizer_kwargs=plain["optimizer"], progress=bool(plain["progress"]),
        executor=plain["executor"], max_concurrent=int(plain["max_concurrent"]), storage=plain["storage"],
        ray_address=plain["ray_address"], gmn_training=plain["gmn_training"],
        surrogate_threads=plain["surrogate_threads"], max_consecutive_failures=int(plain["max_consecutive_failures"]),
    )
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
