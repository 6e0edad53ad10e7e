"""Shared argument checks: the ``mode`` registry and integer bounds.

Every public entry point that takes a ``mode`` validates it here, so the
accepted names and the error message are the same everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

from fms_lightning.errors import ConfigurationError

__all__ = ["MODES", "Mode", "check_mode", "check_int"]

Mode = Literal["min", "max"]

#: ``mode`` -> the sign that turns a value into "larger is better" (the optimizer's internal units).
MODES: dict[str, float] = {"max": 1.0, "min": -1.0}


def check_mode(mode: Any, *, name: str = "mode", allow_none: bool = False) -> Any:
    """Return ``mode`` if it is a key of :data:`MODES` (or None, when ``allow_none``).

    Raises:
        ConfigurationError: Naming what was received and the valid modes.

    >>> check_mode("max")
    'max'
    """
    if (allow_none and mode is None) or (isinstance(mode, str) and mode in MODES):
        return mode
    valid = " or ".join(repr(m) for m in ("min", "max")) + (" or None" if allow_none else "")
    raise ConfigurationError(
        f"{name} must be {valid}, got {mode!r}: 'max' if larger values of the metric are better, 'min' otherwise."
    )


def check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False, hint: str = "") -> Any:
    """Return ``value`` if it is an integer (not a bool) ``>= minimum`` (or None, when ``allow_none``).

    Raises:
        ConfigurationError: Naming what was received and what was expected.

    >>> check_int(3, "max_epochs", minimum=1)
    3
    """
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigurationError(f"{name} must be {expected}, got {value!r}.{(' ' + hint) if hint else ''}")
    return value
