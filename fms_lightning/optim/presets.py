"""The NAdamW hyperparameter list (Table 10 of the NAdamW-lists paper) as named presets.

A *point* fixes every hyperparameter of a training run except the training
horizon: the peak learning rate of a linear-warmup + cosine-to-zero schedule,
the warmup as a fraction of the horizon, NAdamW's betas and weight decay, and the
dropout and label-smoothing rates. The five points are in the paper's rank
order: with a budget of K trials, run the first K.

Presets are named ``nadamw-list/1`` … ``nadamw-list/5`` and can be looked up by
rank, by name, or passed through as a :class:`NAdamWPoint`. Users can load lists
of their own from YAML (:func:`load_hparam_list`) in the same format as
``recipes/nadamw_list.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fms_lightning.errors import ConfigurationError, UnknownPresetError

__all__ = [
    "NAdamWPoint",
    "NADAMW_LIST",
    "PRESET_NAMES",
    "get_preset",
    "preset_name",
    "load_hparam_list",
    "dump_hparam_list",
    "format_table",
]


@dataclass(frozen=True)
class NAdamWPoint:
    """One hyperparameter point of a NAdamW list.

    Attributes:
        lr: Peak (base) learning rate, reached at the end of warmup.
        warmup_fraction: Fraction of the training horizon spent in linear warmup.
        beta1: NAdamW's ``β1``.
        beta2: NAdamW's ``β2``.
        weight_decay: Decoupled weight decay ``λ`` (scaled by the scheduled lr).
        dropout: Probability given to every dropout module of the model.
        label_smoothing: Label smoothing of the cross-entropy loss.

    Raises:
        ConfigurationError: If a value is out of range.
    """

    lr: float
    warmup_fraction: float
    beta1: float
    beta2: float
    weight_decay: float
    dropout: float
    label_smoothing: float

    def __post_init__(self) -> None:
        # field: (lowest allowed, highest allowed, is the upper bound allowed, description)
        ranges = {
            "lr": (0.0, math.inf, False, "a learning rate > 0"),
            "warmup_fraction": (0.0, 1.0, True, "a fraction in [0, 1]"),
            "beta1": (0.0, 1.0, False, "a value in [0, 1)"),
            "beta2": (0.0, 1.0, False, "a value in [0, 1)"),
            "weight_decay": (0.0, math.inf, False, "a value >= 0"),
            "dropout": (0.0, 1.0, False, "a probability in [0, 1)"),
            "label_smoothing": (0.0, 1.0, True, "a value in [0, 1]"),
        }
        for name, (low, high, high_ok, expected) in ranges.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigurationError(f"NAdamWPoint.{name} must be a number, got {value!r}.")
            in_range = low <= value and (value <= high if high_ok else value < high)
            if name == "lr":
                in_range = in_range and value > 0.0
            if not in_range:  # also catches NaN
                raise ConfigurationError(f"NAdamWPoint.{name}={value!r} is invalid; expected {expected}.")

    def to_dict(self) -> dict[str, float]:
        """The point as a plain dict (field name → value)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NAdamWPoint:
        """Build a point from a mapping with exactly the seven fields.

        Raises:
            ConfigurationError: For missing or unknown keys, or bad values.
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [f for f in fields if f not in data]
        unknown = [k for k in data if k not in fields and k != "name"]
        if missing or unknown:
            raise ConfigurationError(
                f"A NAdamW point needs exactly the fields {fields}; missing {missing}, unknown {unknown}."
            )
        return cls(**{f: float(data[f]) for f in fields})


# Table 10 of the NAdamW-lists paper, in rank order, every printed digit kept.
NADAMW_LIST: tuple[NAdamWPoint, ...] = (
    NAdamWPoint(0.007188680089024849, 0.1, 0.9521079797438937, 0.9545645606521953, 0.020932289532959312, 0.0, 0.2),
    NAdamWPoint(0.0011719210768906827, 0.02, 0.9641782560318817, 0.9953311727740848, 0.15957548811577366, 0.1, 0.0),
    NAdamWPoint(0.001183374563441696, 0.02, 0.918959806679234, 0.9941923836947718, 0.028400661323288435, 0.1, 0.1),
    NAdamWPoint(0.0014515212275017363, 0.1, 0.9600296609757403, 0.889423091749684, 0.031808785805059143, 0.0, 0.2),
    NAdamWPoint(0.0005102205206215031, 0.05, 0.9120180064671332, 0.9597041640569521, 0.04833675039698776, 0.1, 0.0),
)

_PREFIX = "nadamw-list/"
PRESET_NAMES: tuple[str, ...] = tuple(f"{_PREFIX}{rank}" for rank in range(1, len(NADAMW_LIST) + 1))
_REGISTRY: dict[str, NAdamWPoint] = dict(zip(PRESET_NAMES, NADAMW_LIST))


def preset_name(point: NAdamWPoint) -> str | None:
    """The registry name of a built-in point, or ``None`` for a user's own point."""
    for name, known in _REGISTRY.items():
        if known == point:
            return name
    return None


def get_preset(key: int | str | NAdamWPoint | Mapping[str, Any]) -> NAdamWPoint:
    """Look a preset up by rank (1-based), name, or pass a point through.

    Args:
        key: A rank ``1..5``, a name such as ``"nadamw-list/2"`` (a bare ``"2"``
            also works), a :class:`NAdamWPoint`, or a mapping of its seven fields.

    Returns:
        The point.

    Raises:
        UnknownPresetError: (a ``KeyError``) for an unknown rank or name; the
            message lists the valid ones.

    >>> get_preset("nadamw-list/1").lr
    0.007188680089024849
    """
    if isinstance(key, NAdamWPoint):
        return key
    if isinstance(key, Mapping):
        return NAdamWPoint.from_dict(key)
    valid = f"ranks 1..{len(NADAMW_LIST)} or names {', '.join(PRESET_NAMES)}"
    if isinstance(key, bool):
        raise UnknownPresetError(f"Unknown NAdamW preset {key!r}; valid presets are {valid}.")
    if isinstance(key, int):
        if 1 <= key <= len(NADAMW_LIST):
            return NADAMW_LIST[key - 1]
        raise UnknownPresetError(f"Unknown NAdamW preset rank {key}; valid presets are {valid}.")
    if isinstance(key, str):
        name = key.strip()
        if name.isdigit():
            return get_preset(int(name))
        if name in _REGISTRY:
            return _REGISTRY[name]
        raise UnknownPresetError(f"Unknown NAdamW preset {key!r}; valid presets are {valid}.")
    raise UnknownPresetError(
        f"A NAdamW preset must be a rank, a name or a NAdamWPoint, got {type(key).__name__} {key!r}; "
        f"valid presets are {valid}."
    )


def load_hparam_list(source: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> tuple[NAdamWPoint, ...]:
    """Read an ordered hyperparameter list from YAML (or from already-parsed data).

    The format is a mapping with key ``points``: a list of mappings with the
    seven fields of :class:`NAdamWPoint` (an optional ``name`` is ignored),
    best-first. ``recipes/nadamw_list.yaml`` is the built-in list in this form.

    Args:
        source: A YAML file path, or the list of point mappings.

    Returns:
        The points, in list order.

    Raises:
        ConfigurationError: If the file is missing, malformed or empty.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except FileNotFoundError as err:
            raise ConfigurationError(f"Hyperparameter list file {os.fspath(source)!r} does not exist.") from err
        except yaml.YAMLError as err:
            raise ConfigurationError(f"Hyperparameter list {os.fspath(source)!r} is not valid YAML: {err}") from err
        points = data.get("points") if isinstance(data, Mapping) else None
        where = os.fspath(source)
    else:
        points, where = source, "the given data"
    if not isinstance(points, Sequence) or isinstance(points, str) or len(points) == 0:
        raise ConfigurationError(
            f"Expected a non-empty list of points under the key 'points' in {where}, got {type(points).__name__}."
        )
    out = []
    for i, item in enumerate(points, start=1):
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"Point {i} in {where} must be a mapping of fields, got {item!r}.")
        try:
            out.append(NAdamWPoint.from_dict(item))
        except ConfigurationError as err:
            raise ConfigurationError(f"Point {i} in {where}: {err}") from err
    return tuple(out)


def dump_hparam_list(points: Sequence[NAdamWPoint], path: str | os.PathLike[str], *, name: str = "custom") -> None:
    """Write an ordered list in the YAML format :func:`load_hparam_list` reads."""
    data = {
        "name": name,
        "points": [{"name": f"{name}/{i}", **p.to_dict()} for i, p in enumerate(points, start=1)],
    }
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def format_table(points: Sequence[NAdamWPoint] = NADAMW_LIST, names: Sequence[str] | None = None) -> str:
    """A plain-text table of a list, one row per point, every digit shown."""
    names = list(names) if names is not None else [preset_name(p) or f"#{i}" for i, p in enumerate(points, 1)]
    fields = [f.name for f in dataclasses.fields(NAdamWPoint)]
    rows = [["rank", "name", *fields]]
    rows += [[str(i), n, *(repr(getattr(p, f)) for f in fields)] for i, (n, p) in enumerate(zip(names, points), 1)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
