"""Shared Ray plumbing for the tuner's and the sweep's ``executor="ray"``.

Ray is an optional extra (``pip install 'fms-lightning[ray]'``); nothing here
imports it until a Ray executor is asked for.
"""

from __future__ import annotations

from typing import Any

from fms_lightning.errors import ConfigurationError

__all__ = [
    "EXECUTORS", "cancel_all", "check_executor", "describe", "ensure_ray", "is_lost_worker", "raise_task_cause",
    "require_ray",
]

EXECUTORS = ("local", "ray")


def check_executor(executor: str, max_concurrent: int) -> None:
    """Validate ``executor`` and ``max_concurrent`` (shared by the tuner and the sweep).

    Raises:
        ConfigurationError: For an unknown executor, or ``max_concurrent`` that is
            not a positive integer.
    """
    if executor not in EXECUTORS:
        raise ConfigurationError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}.")
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
        raise ConfigurationError(f"max_concurrent must be an integer >= 1, got {max_concurrent!r}.")


def require_ray() -> Any:
    """Import and return the ``ray`` module.

    Raises:
        ConfigurationError: If Ray is not installed (the message says how to get it).
    """
    try:
        import ray
    except ImportError as err:
        raise ConfigurationError(
            "executor='ray' needs Ray, which is not installed. Install the extra with "
            "pip install 'fms-lightning[ray]' (or pip install ray), or use executor='local'."
        ) from err
    return ray


def ensure_ray(address: str | None = None) -> bool:
    """Connect to Ray unless already connected; returns whether this call started it.

    With ``address=None`` and no ``RAY_ADDRESS`` set, Ray starts a local runtime
    sized to this machine. Call ``ray.init(...)`` yourself first to choose the
    cluster or the number of CPUs; it is then used as it is.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True


def is_lost_worker(err: BaseException) -> bool:
    """Whether ``err`` means the worker or node went away (not that the task raised).

    Such a task is re-run from its last committed state; an exception raised by
    the task's own code is a failure of the trial instead.
    """
    import ray.exceptions as rex

    lost = (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.OwnerDiedError,
            rex.LocalRayletDiedError, rex.ActorDiedError, rex.TaskUnschedulableError)
    return isinstance(err, lost) and not isinstance(err, rex.RayTaskError)


def raise_task_cause(err: BaseException) -> None:
    """Re-raise the exception a Ray task's own code raised, as its original type (chained to ``err``)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        raise cause from err
    raise err


def describe(err: BaseException) -> str:
    """``"TypeName: first line of the message"`` for a Ray error (its messages run to many lines)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def cancel_all(refs: Any) -> None:
    """Force-cancel Ray tasks that may still run (best effort: finished or lost ones are skipped)."""
    ray = require_ray()
    for ref in list(refs):
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001, S110 - already finished or gone
            pass
