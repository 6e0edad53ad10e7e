"""Import an object named ``"package.module:attribute"`` (recipes, hub manifests, sweep recipes)."""

from __future__ import annotations

import importlib
from typing import Any

from fms_lightning.errors import ConfigurationError, FMSError

__all__ = ["first_line", "import_object"]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name if the message is empty)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def import_object(spec: str, *, error: type[FMSError] = ConfigurationError) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted: ``"pkg.mod:Class.method"``).

    This runs the module's code: only call it on strings you trust.

    Args:
        spec: What to import.
        error: The error class raised when it cannot be imported.

    Raises:
        FMSError: Of class ``error``, if the string is malformed, the object cannot be
            imported, or importing its module raised.

    >>> import_object("fms_lightning.errors:ConfigurationError").__name__
    'ConfigurationError'
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise error(f"Expected 'package.module:attribute', got {spec!r}.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise error(f"Cannot import {spec!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a module that raises on import
        raise error(f"Importing {spec!r} raised {type(err).__name__}: {first_line(err)}") from err
    return obj
