"""Check keyword arguments from a recipe or the command line before anything runs.

A recipe's ``trainer:`` block reaches ``lightning.Trainer(**kwargs)`` and its
``optimizer:`` block ``FMSOptimizer(**kwargs)``. Both would accept some wrong
values silently (``max_epochs="abc"``) and report others only once training
starts, with a traceback. :func:`check_kwargs` and :func:`check_trainer_kwargs`
refuse unknown keys and values of the wrong type up front, with a message that
names the key.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from fms_lightning.errors import ConfigurationError

__all__ = ["check_kwargs", "check_trainer_kwargs"]

_SIMPLE = (bool, int, float, str, type(None))


def _allowed(annotation: Any) -> tuple[set[type], set[Any]] | None:
    """``(types, literal values)`` a value may have, or ``None`` if the annotation is not simple."""
    if annotation in _SIMPLE:
        return {annotation}, set()
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return set(), set(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        values: set[Any] = set()
        for arg in typing.get_args(annotation):
            sub = _allowed(arg)
            if sub is None:
                return None
            kinds |= sub[0]
            values |= sub[1]
        return kinds, values
    return None


def _fits(value: Any, kinds: set[type], values: set[Any]) -> bool:
    if value is None:
        return type(None) in kinds or None in values
    if isinstance(value, bool):
        return bool in kinds or value in values
    if isinstance(value, int) and (int in kinds or float in kinds):
        return True
    if isinstance(value, float) and float in kinds:
        return True
    if isinstance(value, str) and str in kinds:
        return True
    return any(value == v and type(value) is type(v) for v in values)


def _describe(kinds: set[type], values: set[Any]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    parts = [names[k] for k in (int, float, bool, str, type(None)) if k in kinds]
    if values:
        parts.append("one of " + ", ".join(repr(v) for v in sorted(values, key=repr)))
    return " or ".join(parts)


def check_kwargs(func: Any, kwargs: Mapping[str, Any], *, where: str, what: str, reserved: Iterable[str] = (),
                 reserved_hint: str = "") -> None:
    """Refuse keyword arguments of ``func`` that are unknown, reserved or of a simple wrong type.

    Args:
        func: The callable (or class) the arguments are for.
        kwargs: The arguments.
        where: How the message names the block (``trainer`` gives ``trainer.max_epochs``).
        what: What an argument is, for the message (``"a lightning.Trainer argument"``).
        reserved: Keys the caller sets itself; giving one is an error.
        reserved_hint: Appended to the message for a reserved key (what to use instead).

    Raises:
        ConfigurationError: Naming the key, the value received and what was expected.
    """
    target = func.__init__ if isinstance(func, type) else func
    params = inspect.signature(target).parameters
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check the keys only
        hints = {}
    reserved = set(reserved)
    accepted = [n for n, p in params.items() if n != "self" and n not in reserved
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in kwargs.items():
        if key in reserved:
            raise ConfigurationError(f"{where}.{key} cannot be set here: {reserved_hint or 'it is set for you'}.")
        if key not in accepted:
            raise ConfigurationError(f"Unknown {where} option {key!r} ({what} was expected); accepted are "
                                     f"{', '.join(accepted)}.")
        allowed = _allowed(hints.get(key, params[key].annotation))
        if allowed is not None and not _fits(value, *allowed):
            raise ConfigurationError(f"{where}.{key}={value!r} has the wrong type; expected {_describe(*allowed)}.")


def check_trainer_kwargs(kwargs: Mapping[str, Any], *, where: str = "trainer", reserved: Iterable[str] = (),
                         reserved_hint: str = "", construct: bool = True) -> None:
    """Refuse ``lightning.Trainer`` arguments that are unknown, reserved or of the wrong type.

    Args:
        kwargs: The arguments, e.g. a recipe's ``trainer:`` block.
        where: How the message names the block (``trainer`` gives ``trainer.max_epochs``).
        reserved: Keys the caller sets itself; giving one is an error.
        reserved_hint: Appended to the message for a reserved key (what to use instead).
        construct: Also build a throw-away ``Trainer`` with the arguments, so that
            values Lightning itself rejects (an unknown accelerator, ...) fail here.
            (Not where the trainer runs elsewhere, e.g. on a Ray worker with a GPU.)

    Raises:
        ConfigurationError: Naming the key, the value received and what was expected.
    """
    import lightning.pytorch as pl

    check_kwargs(pl.Trainer, kwargs, where=where, what="a lightning.Trainer argument", reserved=reserved,
                 reserved_hint=reserved_hint)
    if not construct:
        return
    from fms_lightning.tuner._lightning import quiet_lightning

    probe = dict(kwargs)
    probe.pop("callbacks", None)
    probe.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        with quiet_lightning():
            pl.Trainer(**probe)
    except Exception as err:  # noqa: BLE001 - Lightning's own checks: TypeError, ValueError, MisconfigurationException
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigurationError(f"Lightning refused the {where} options {dict(kwargs)!r}: {detail}") from None
