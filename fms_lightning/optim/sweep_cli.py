"""``fms-lightning sweep RECIPE --top K``: a list sweep from a demo-style recipe.

The trials run in local processes (``--parallel P`` at once), or as Ray tasks
with ``--executor ray`` (``--ray-address ADDR`` to join a running cluster).

Importing this module does not import Lightning; :func:`register` can be
called while building the command-line parser at no cost.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from fms_lightning._imports import import_object
from fms_lightning._ray import EXECUTORS
from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.presets import NADAMW_LIST, NAdamWPoint, load_hparam_list, preset_name

if TYPE_CHECKING:
    from fms_lightning.optim.sweep import SweepResult

__all__ = ["run_sweep_recipe", "register"]


def run_sweep_recipe(
    cfg: Any, *, top: int = 5, hparam_list: Sequence[NAdamWPoint] = NADAMW_LIST, parallel: int = 1,
    stream: TextIO | None = None, executor: str = "local", ray_address: str | None = None,
) -> SweepResult:
    """Run a sweep from a demo-style recipe (``recipes/digits_demo.yaml``; its ``preset`` is ignored).

    The recipe's ``data``, ``model``, ``seed``, ``variant`` and ``trainer`` keys are
    used as in the demo (``trainer.max_epochs`` is the epochs per trial). Optional
    keys: ``monitor`` (default ``val_acc``), ``mode`` (``max``), and ``module`` /
    ``datamodule`` as ``pkg.mod:callable`` to sweep another model:
    ``module(point, **model)`` and ``datamodule(**data)``. Without ``datamodule``,
    ``data`` configures scikit-learn's bundled ``digits``, ``wine`` or
    ``breast_cancer`` (``SklearnDataModule``): as 8x8 images for the built-in
    DigitsCNN, as feature vectors for a ``module`` of your own (``data.as_image``
    overrides).

    Args:
        cfg: The recipe (a ``DictConfig`` or a dict).
        top: How many presets to run.
        hparam_list: The list.
        parallel: Trials at once.
        stream: Where the table goes (default stdout).
        executor: ``"local"`` (processes of this machine) or ``"ray"`` (one Ray task per trial).
        ray_address: With ``executor="ray"``, the Ray cluster to connect to (default:
            ``RAY_ADDRESS``, else a local runtime started for the sweep).

    Returns:
        The :class:`SweepResult`.

    Raises:
        ConfigurationError: For a recipe with missing or bad keys, or a bad executor.
    """
    from omegaconf import DictConfig, OmegaConf

    from fms_lightning.optim.recipe import validate_demo_recipe
    from fms_lightning.optim.sweep import sweep
    from fms_lightning.recipes import builtin

    stream = stream if stream is not None else sys.stdout
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    cfg = validate_demo_recipe(raw, extra={"monitor": "val_acc", "mode": "max", "module": None, "datamodule": None},
                               free_blocks="module" in raw, reserved_trainer=(), trainer_default={},
                               construct_trainer=executor != "ray")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(hparam_list):
        raise ConfigurationError(f"top must be an integer in 1..{len(hparam_list)} (the list's length), got {top!r}.")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigurationError(f"parallel must be an integer >= 1, got {parallel!r}.")
    if cfg.mode not in ("min", "max"):
        raise ConfigurationError(f"The sweep recipe's mode must be 'min' or 'max', got {cfg.mode!r}.")
    try:
        data = dict(OmegaConf.to_container(cfg.data, resolve=True))  # type: ignore[arg-type]
        model = dict(OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
        trainer = dict(OmegaConf.to_container(cfg.trainer, resolve=True))  # type: ignore[arg-type]
        seed = int(cfg.get("seed", 0))
    except (AttributeError, KeyError, ValueError) as err:
        raise ConfigurationError(f"The sweep recipe is missing a key: {err}. Start from recipes/digits_demo.yaml.") from err
    if "max_epochs" not in trainer:
        raise ConfigurationError("The sweep recipe needs trainer.max_epochs (epochs per trial).")
    max_epochs = int(trainer.pop("max_epochs"))
    if cfg.module is not None:
        factory = functools.partial(import_object(cfg.module), **model)
    else:  # the demo's DigitsCNN
        factory = functools.partial(builtin("demo.model"), variant=str(cfg.get("variant", "optax")), **model)
    if cfg.datamodule is not None:
        dm = import_object(cfg.datamodule)(**data)
    else:  # scikit-learn's bundled data: digits as 8x8 images for DigitsCNN, any dataset as vectors for a module
        name = str(data.pop("name", "digits"))
        as_image = bool(data.pop("as_image", name == "digits" and cfg.module is None))
        if cfg.module is None and not as_image:
            raise ConfigurationError(
                f"The built-in model, DigitsCNN, takes 8x8 digits images, so data.name={name!r} needs a model of "
                "your own: add 'module: pkg.mod:factory' (called as factory(point, **model), returning a "
                "NAdamWListModule), and optionally 'datamodule: pkg.mod:callable' (called with **data)."
            )
        dm = builtin("demo.data")(name, seed=seed, as_image=as_image, **data)
    monitor, mode = str(cfg.get("monitor", "val_acc")), str(cfg.get("mode", "max"))
    where = " on Ray" if executor == "ray" else ""
    print(f"Sweeping the first {top} presets ({parallel} at a time{where}), {max_epochs} epochs each, "
          f"monitoring {monitor} ({mode})", file=stream, flush=True)
    result = sweep(factory, dm, top=top, hparam_list=hparam_list, max_epochs=max_epochs, monitor=monitor,
                   mode=mode, parallel=parallel, seed=seed, trainer_kwargs=trainer,  # type: ignore[arg-type]
                   executor=executor, ray_address=ray_address)
    print(result.format_table(), file=stream)
    best = result.best
    print(f"best: rank {best.rank} ({preset_name(best.point) or 'custom'}) {monitor}={best.best_value:.4f} "
          f"at epoch {best.best_epoch}", file=stream, flush=True)
    return result


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fms_lightning.recipes import load_recipe

    recipe, overrides = args.recipe, list(args.overrides)
    if "=" in recipe:  # "sweep key=value ...": no recipe given, the first override was taken for one
        recipe, overrides = "digits_demo", [recipe, *overrides]
    points = load_hparam_list(args.list) if args.list else NADAMW_LIST
    run_sweep_recipe(load_recipe(recipe, overrides), top=args.top, hparam_list=points,
                     parallel=args.parallel if args.parallel is not None else args.top,
                     executor=args.executor, ray_address=args.ray_address)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sweep RECIPE --top K [--list FILE] [--parallel P] [--executor E] [key=value ...]`` to ``subparsers``.

    ``--executor`` is ``local`` (default) or ``ray``; ``--ray-address ADDR`` picks the Ray cluster.

    Returns:
        The ``sweep`` parser; it sets ``func``, which takes the namespace and returns an exit status.
    """
    parser = subparsers.add_parser("sweep", help="train the first K presets of a list and report the best")
    parser.add_argument("recipe", nargs="?", default="digits_demo", help="recipe name or YAML path (demo format)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=5")
    parser.add_argument("--top", type=int, default=5, help="K: run the first K presets (default 5)")
    parser.add_argument("--list", help="a list YAML of your own (default: the built-in NADAMW_LIST)")
    parser.add_argument("--parallel", type=int, default=None, help="trials at once (default K: all in parallel)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="run the trials in local processes (default) or as Ray tasks (needs the [ray] extra)")
    parser.add_argument("--ray-address", default=None,
                        help="with --executor ray: the cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.set_defaults(func=_cmd_sweep)
    return parser
