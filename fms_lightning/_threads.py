"""Torch intra-op threads for the library's own surrogate work.

The surrogate fits and predicts on tiny matrices, where extra intra-op threads
only add contention: on a 2-core machine one thread made FMS-GMN 5-10x faster
than torch's default. :func:`capped_threads` sets the thread count for a block
and restores the caller's setting afterwards, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fms_lightning.errors import ConfigurationError

__all__ = ["capped_threads", "check_threads"]


def check_threads(threads: int | None, name: str = "surrogate_threads") -> int | None:
    """``threads`` if it is ``None`` or an integer >= 1.

    Raises:
        ConfigurationError: Otherwise.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigurationError(f"{name} must be an integer >= 1, or None to keep torch's setting; got {threads!r}.")
    return threads


@contextlib.contextmanager
def capped_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)``; restore the previous count afterwards.

    Args:
        threads: Intra-op threads inside the block (``None``: leave torch's setting).

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with capped_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
