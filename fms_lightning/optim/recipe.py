"""The list recipe: the schema of ``recipes/digits_demo.yaml``, shared by ``fms-lightning demo`` and ``sweep``.

A list recipe trains a model with NAdamW-list presets: ``preset`` (or the
sweep's ``--top K``), ``variant``, ``seed``, the ``data``, ``model`` and ``trainer``
blocks, and ``output_dir``. :func:`validate_demo_recipe` checks one, and
:func:`resolve_preset_spec` turns its ``preset`` into a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fms_lightning.errors import ConfigurationError
from fms_lightning.optim.presets import NAdamWPoint, get_preset, load_hparam_list

__all__ = ["DemoRecipe", "resolve_preset_spec", "validate_demo_recipe"]


@dataclass
class DemoData:
    """The ``data:`` block of a demo recipe (:class:`SklearnDataModule` arguments)."""

    name: str = "digits"
    batch_size: int = 64
    val_fraction: float = 0.2


@dataclass
class DemoModel:
    """The ``model:`` block of a demo recipe (:class:`DigitsCNN` arguments)."""

    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64


@dataclass
class DemoRecipe:
    """The schema of a demo recipe (``recipes/digits_demo.yaml``); omegaconf checks keys and types against it."""

    preset: Any = "nadamw-list/1"
    variant: str = "optax"
    seed: int = 0
    data: DemoData = field(default_factory=DemoData)
    model: DemoModel = field(default_factory=DemoModel)
    trainer: dict[str, Any] = field(default_factory=lambda: {"max_epochs": 15})
    output_dir: str = "runs/demo"


#: Trainer arguments the demo sets itself.
_DEMO_TRAINER_KEYS = ("logger", "callbacks", "enable_progress_bar", "enable_model_summary", "accelerator",
                      "deterministic", "log_every_n_steps", "num_sanity_val_steps")


def validate_demo_recipe(cfg: DictConfig | dict[str, Any], *, extra: dict[str, Any] | None = None,
                         free_blocks: bool = False, reserved_trainer: tuple[str, ...] = _DEMO_TRAINER_KEYS,
                         trainer_default: dict[str, Any] | None = None, construct_trainer: bool = True) -> DictConfig:
    """Check a demo recipe against :class:`DemoRecipe`: unknown keys and wrong types are errors.

    Args:
        cfg: The recipe.
        extra: More top-level keys and their defaults (the sweep's ``monitor``, ``module``, ...).
        free_blocks: Let ``data`` and ``model`` hold any keys (for a user's own module).
        reserved_trainer: Trainer arguments the caller sets itself (refused in ``trainer``).
        trainer_default: The ``trainer`` block of a recipe without one (default ``{max_epochs: 15}``).
        construct_trainer: Also let Lightning check the trainer options by building a
            throw-away ``Trainer`` here (not when trials run on other machines).

    Returns:
        The recipe with defaults filled in.

    Raises:
        ConfigurationError: Naming the key, what it got and what was expected.
    """
    import dataclasses

    from omegaconf.errors import OmegaConfBaseException

    from fms_lightning._kwargs import check_trainer_kwargs

    fields = [(f.name, f.type, f) for f in dataclasses.fields(DemoRecipe)]
    if free_blocks:
        fields = [(n, "dict[str, Any]", dataclasses.field(default_factory=dict)) if n in ("data", "model") else (n, t, f)
                  for n, t, f in fields]
    if trainer_default is not None:
        fields = [(n, t, dataclasses.field(default_factory=lambda: dict(trainer_default))) if n == "trainer"
                  else (n, t, f) for n, t, f in fields]
    fields += [(k, Any, dataclasses.field(default=v)) for k, v in (extra or {}).items()]
    schema_cls = dataclasses.make_dataclass("DemoRecipe", fields)
    schema_cls.__module__ = __name__
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        detail = str(err).splitlines()[0].rstrip(".")
        if "not in" in detail:
            hint = f"accepted keys are {', '.join(n for n, _, _ in fields)} (data and model take the keys of recipes/digits_demo.yaml)"
        else:
            hint = "give it a value of the type that recipes/digits_demo.yaml shows"
        raise ConfigurationError(f"Bad demo recipe key {key!r}: {detail}; {hint}.") from None
    assert isinstance(merged, DictConfig)
    if merged.variant not in ("optax", "algoperf"):
        raise ConfigurationError(f"variant must be 'optax' or 'algoperf', got {merged.variant!r}.")
    trainer = OmegaConf.to_container(merged.trainer, resolve=True)
    assert isinstance(trainer, dict)
    check_trainer_kwargs(trainer, reserved=reserved_trainer, reserved_hint="the demo sets it",
                         construct=construct_trainer)
    return merged


def resolve_preset_spec(spec: Any) -> NAdamWPoint:
    """A preset from a rank, a name, or ``path/to/list.yaml#rank`` for a user's own list.

    Raises:
        UnknownPresetError: For an unknown rank or name.
        ConfigurationError: For a bad list file or a rank outside it.
    """
    if isinstance(spec, str) and (".yaml" in spec or ".yml" in spec):
        path, _, rank = spec.partition("#")
        points = load_hparam_list(path)
        try:
            index = int(rank) if rank else 1
        except ValueError:
            raise ConfigurationError(f"preset={spec!r}: the rank after '#' must be an integer, got {rank!r}.") from None
        if not 1 <= index <= len(points):
            raise ConfigurationError(f"{path} has ranks 1..{len(points)}; got {index}.")
        return points[index - 1]
    return get_preset(spec)
