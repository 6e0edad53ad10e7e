"""Search spaces: dimensions, seeded sampling, and encoding to the unit cube.

A :class:`SearchSpace` maps names to dimensions. A config is a plain ``dict``
from those names to values. The surrogate never sees raw values: it sees
:meth:`SearchSpace.encode`, which maps

- ``Uniform`` / ``IntUniform`` by min-max to ``[0, 1]``,
- ``LogUniform`` (and ``IntUniform(log=True)``) by ``log`` then min-max,
- ``Choice`` and ``HubChoice`` to a one-hot block, as the FMS paper does.

Sampling takes a :class:`numpy.random.Generator`; no global RNG is touched.

>>> space = SearchSpace({"lr": LogUniform(1e-4, 1e-1), "bs": Choice([16, 32])})
>>> configs = space.sample(2, rng=np.random.default_rng(0))
>>> space.encode(configs).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fms_lightning.errors import SearchSpaceError

__all__ = [
    "Dimension",
    "LogUniform",
    "Uniform",
    "IntUniform",
    "Choice",
    "HubChoice",
    "SearchSpace",
]


def _label(dim: Dimension) -> str:
    kind = type(dim).__name__
    return f"dimension {dim.name!r} ({kind})" if dim.name else f"{kind} dimension"


@dataclass(frozen=True)
class Dimension:
    """Base class of search-space dimensions. Subclasses are frozen dataclasses."""

    @property
    def encoded_size(self) -> int:
        """Number of unit-cube coordinates this dimension occupies."""
        return 1

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, value: Any) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, coords: Sequence[float]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, value: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class _Bounded(Dimension):
    low: float
    high: float
    name: str | None = field(default=None, kw_only=True)
    _log = False

    def __post_init__(self) -> None:
        for key in ("low", "high"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SearchSpaceError(
                    f"{_label(self)}: {key}={v!r} is not a finite number; "
                    f"give numeric bounds, e.g. low=0.0, high=1.0."
                )
        if self.low >= self.high:
            raise SearchSpaceError(
                f"{_label(self)}: low={self.low!r} >= high={self.high!r}; "
                f"expected low < high. Swap or widen the bounds."
            )
        if self._is_log and self.low <= 0:
            raise SearchSpaceError(
                f"{_label(self)}: log-scale bound low={self.low!r} is <= 0; "
                f"expected 0 < low < high. Use Uniform for ranges that include 0."
            )

    @property
    def _is_log(self) -> bool:
        return self._log

    def _t(self, v: float) -> float:
        return math.log(v) if self._is_log else float(v)

    def _u(self, u: float) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        v = lo + min(max(u, 0.0), 1.0) * (hi - lo)
        return math.exp(v) if self._is_log else v

    def encode(self, value: Any) -> list[float]:
        lo, hi = self._t(self.low), self._t(self.high)
        return [(self._t(float(value)) - lo) / (hi - lo)]

    def validate(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise SearchSpaceError(
                f"{_label(self)}: value {value!r} is not a number; expected a number in "
                f"[{self.low}, {self.high}]."
            )
        tol = 1e-9 * max(1.0, abs(self.high))
        if not (self.low - tol <= float(value) <= self.high + tol):
            raise SearchSpaceError(
                f"{_label(self)}: value {value!r} is outside [{self.low}, {self.high}]; "
                f"clip it or widen the dimension."
            )

    def sample(self, rng: np.random.Generator) -> float:
        return self._u(float(rng.random()))

    def decode(self, coords: Sequence[float]) -> float:
        return self._u(float(coords[0]))

    def to_dict(self) -> dict[str, Any]:
        return {"type": _TYPE_NAMES[type(self)], "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform(_Bounded):
    """A real value drawn uniformly from ``[low, high]``.

    Args:
        low: Lower bound.
        high: Upper bound; must exceed ``low``.
        name: Set by :class:`SearchSpace`; used in error messages.

    Raises:
        SearchSpaceError: If ``low >= high`` or a bound is not finite.
    """


@dataclass(frozen=True)
class LogUniform(_Bounded):
    """A positive real value drawn uniformly in log space from ``[low, high]``.

    Raises:
        SearchSpaceError: If ``low >= high`` or ``low <= 0``.
    """

    _log = True


@dataclass(frozen=True)
class IntUniform(_Bounded):
    """An integer drawn uniformly (or log-uniformly with ``log=True``) from ``[low, high]``.

    Raises:
        SearchSpaceError: If ``low >= high``, a bound is not an integer, or ``log`` and ``low <= 0``.
    """

    log: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("low", "high"):
            if int(getattr(self, key)) != getattr(self, key):
                raise SearchSpaceError(
                    f"{_label(self)}: {key}={getattr(self, key)!r} is not an integer; "
                    f"IntUniform needs integer bounds."
                )

    @property
    def _is_log(self) -> bool:
        return self.log

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            return int(min(max(round(super().sample(rng)), self.low), self.high))
        return int(rng.integers(int(self.low), int(self.high) + 1))

    def decode(self, coords: Sequence[float]) -> int:
        return int(min(max(round(super().decode(coords)), self.low), self.high))

    def validate(self, value: Any) -> None:
        super().validate(value)
        if int(value) != value:
            raise SearchSpaceError(f"{_label(self)}: value {value!r} is not an integer.")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(low=int(self.low), high=int(self.high), log=self.log)
        return out


@dataclass(frozen=True)
class Choice(Dimension):
    """A categorical value, encoded one-hot.

    Args:
        values: The options (numbers, strings or booleans); at least one, no duplicates.
        name: Set by :class:`SearchSpace`; used in error messages.

    Raises:
        SearchSpaceError: If ``values`` is empty or has duplicates.
    """

    values: tuple[Any, ...]
    name: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Iterable):
            raise SearchSpaceError(
                f"{_label(self)}: values={self.values!r} is not a list; pass a list of options."
            )
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise SearchSpaceError(
                f"{_label(self)}: values is empty; expected at least one option."
            )
        if len(set(map(repr, self.values))) != len(self.values):
            raise SearchSpaceError(
                f"{_label(self)}: values {list(self.values)!r} contain duplicates; list each once."
            )

    @property
    def encoded_size(self) -> int:
        return len(self.values)

    def _index(self, value: Any) -> int:
        for k, v in enumerate(self.values):
            same_kind = isinstance(v, str) == isinstance(value, str) and isinstance(
                v, (bool, np.bool_)
            ) == isinstance(value, (bool, np.bool_))
            if same_kind and v == value:
                return k
        raise SearchSpaceError(
            f"{_label(self)}: value {value!r} is not one of {list(self.values)!r}."
        )

    def validate(self, value: Any) -> None:
        self._index(value)

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def encode(self, value: Any) -> list[float]:
        out = [0.0] * len(self.values)
        out[self._index(value)] = 1.0
        return out

    def decode(self, coords: Sequence[float]) -> Any:
        return self.values[int(np.argmax(np.asarray(coords, dtype=float)))]

    def to_dict(self) -> dict[str, Any]:
        return {"type": _TYPE_NAMES[type(self)], "values": list(self.values)}


@dataclass(frozen=True)
class HubChoice(Choice):
    """The choice of a pretrained model: its values are hub entry names.

    At most one ``HubChoice`` may appear in a space; the optimizer uses it to find
    a new config's starting weights W_{i,0}.
    """


_TYPE_NAMES: dict[type, str] = {
    Uniform: "uniform",
    LogUniform: "log_uniform",
    IntUniform: "int_uniform",
    Choice: "choice",
    HubChoice: "hub",
}
_TYPES = {v: k for k, v in _TYPE_NAMES.items()}


class SearchSpace:
    """An ordered mapping from names to dimensions.

    Args:
        dimensions: ``{name: Dimension}``; the order fixes the encoding layout.

    Raises:
        SearchSpaceError: If empty, a name is not a non-empty string, a value is not a
            :class:`Dimension`, or there is more than one :class:`HubChoice`.

    >>> SearchSpace({"dropout": Uniform(0.0, 1.0)}).names
    ('dropout',)
    """

    def __init__(self, dimensions: Mapping[str, Dimension]) -> None:
        if not isinstance(dimensions, Mapping) or not dimensions:
            raise SearchSpaceError(
                f"SearchSpace received {dimensions!r}; expected a non-empty mapping "
                f"{{name: Dimension}}."
            )
        dims: dict[str, Dimension] = {}
        for name, dim in dimensions.items():
            if not isinstance(name, str) or not name:
                raise SearchSpaceError(f"SearchSpace: dimension name {name!r} is not a non-empty string.")
            if not isinstance(dim, Dimension):
                raise SearchSpaceError(
                    f"SearchSpace: dimension {name!r} is {dim!r}; expected a Dimension such as "
                    f"Uniform, LogUniform, IntUniform, Choice or HubChoice."
                )
            dims[name] = dim if dim.name == name else replace(dim, name=name)
        hubs = [n for n, d in dims.items() if isinstance(d, HubChoice)]
        if len(hubs) > 1:
            raise SearchSpaceError(f"SearchSpace: dimensions {hubs} are all HubChoice; expected at most one.")
        self._dims = dims
        self.hub_name: str | None = hubs[0] if hubs else None
        self.encoded_size: int = sum(d.encoded_size for d in dims.values())

    # -- structure -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._dims)

    def __getitem__(self, name: str) -> Dimension:
        return self._dims[name]

    def __len__(self) -> int:
        return len(self._dims)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self._dims == other._dims

    def __repr__(self) -> str:
        return f"SearchSpace({self._dims!r})"

    # -- configs ---------------------------------------------------------------------
    def validate(self, config: Mapping[str, Any]) -> None:
        """Check that ``config`` has exactly this space's keys and in-range values.

        Raises:
            SearchSpaceError: On a missing or unknown key, or an invalid value.
        """
        missing = [n for n in self._dims if n not in config]
        extra = [k for k in config if k not in self._dims]
        if missing or extra:
            raise SearchSpaceError(
                f"Config keys {sorted(config)} do not match the space: missing {missing}, "
                f"unknown {extra}. Expected exactly {list(self._dims)}."
            )
        for name, dim in self._dims.items():
            dim.validate(config[name])

    def sample(self, n: int, *, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Draw ``n`` configs independently.

        Args:
            n: Number of configs.
            rng: The generator to draw from, e.g. ``np.random.default_rng(seed)``.

        Returns:
            A list of ``n`` config dicts.

        Raises:
            SearchSpaceError: If ``n < 0`` or ``rng`` is not a numpy Generator.
        """
        if not isinstance(rng, np.random.Generator):
            raise SearchSpaceError(
                f"sample() received rng={rng!r}; expected numpy.random.Generator "
                f"(np.random.default_rng(seed))."
            )
        if n < 0:
            raise SearchSpaceError(f"sample() received n={n}; expected n >= 0.")
        return [{name: d.sample(rng) for name, d in self._dims.items()} for _ in range(n)]

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Encode configs into the unit cube (log, then min-max; one-hot for choices).

        Returns:
            A float64 tensor of shape `(n, encoded_size)`.

        Raises:
            SearchSpaceError: If a config does not fit the space.
        """
        rows = []
        for cfg in configs:
            self.validate(cfg)
            row: list[float] = []
            for name, d in self._dims.items():
                row.extend(d.encode(cfg[name]))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), self.encoded_size)

    def decode(self, encoded: torch.Tensor) -> list[dict[str, Any]]:
        """Map unit-cube rows `(n, encoded_size)` back to configs (clipped, argmax for choices)."""
        enc = torch.as_tensor(encoded, dtype=torch.float64)
        if enc.ndim != 2 or enc.shape[1] != self.encoded_size:
            raise SearchSpaceError(
                f"decode() received shape {tuple(enc.shape)}; expected (n, {self.encoded_size})."
            )
        out = []
        for row in enc.tolist():
            cfg, k = {}, 0
            for name, d in self._dims.items():
                cfg[name] = d.decode(row[k : k + d.encoded_size])
                k += d.encoded_size
            out.append(cfg)
        return out

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-data form, readable by :meth:`from_dict`."""
        return {name: d.to_dict() for name, d in self._dims.items()}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Build a space from ``{name: {"type": ..., ...}}``.

        Types: ``uniform``/``log_uniform`` (``low``, ``high``), ``int_uniform`` (``low``,
        ``high``, optional ``log``), ``choice``/``hub`` (``values``). A top-level
        ``search_space`` key is unwrapped.

        Raises:
            SearchSpaceError: On an unknown type or malformed entry (names the dimension).
        """
        if isinstance(spec, Mapping) and set(spec) == {"search_space"}:
            spec = spec["search_space"]
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(f"from_dict() received {type(spec).__name__}; expected a mapping.")
        dims: dict[str, Dimension] = {}
        for name, entry in spec.items():
            if not isinstance(entry, Mapping) or "type" not in entry:
                raise SearchSpaceError(
                    f"Dimension {name!r}: entry {entry!r} has no 'type'; expected e.g. "
                    f"{{type: log_uniform, low: 1e-4, high: 1e-1}}."
                )
            kind = _TYPES.get(str(entry["type"]))
            if kind is None:
                raise SearchSpaceError(
                    f"Dimension {name!r}: unknown type {entry['type']!r}; valid types are {sorted(_TYPES)}."
                )
            kwargs = {k: v for k, v in dict(entry).items() if k != "type"}
            try:
                dims[name] = kind(**kwargs, name=name)
            except TypeError as err:
                raise SearchSpaceError(f"Dimension {name!r} ({entry['type']}): {err}.") from err
        return cls(dims)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Load a space from a YAML file (see :meth:`from_dict` for the format)."""
        import yaml

        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(yaml.safe_load(fh))
