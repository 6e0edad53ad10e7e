"""Fit the surrogate while a segment trains, with the local executor: :meth:`FMSOptimizer.fit_ahead` in a fork.

Why a forked process and not a thread: the fit would share three process-wide things with
the training running in this process. Torch's global random generator (the surrogate seeds
its initialisation through it, which would shift the training's random stream), torch's
intra-op thread count (the optimizer sets ``surrogate_threads`` around its fits) and the
GIL (a fit is mostly Python, as is Lightning's loop for small models). A child forked just
before the segment starts has its own copy of all three, so the segment trains exactly as
it would without it. The child fits, sends the fitted parameters back (``torch.save`` bytes
through a pipe), and exits; the driver installs them when the segment has ended, before it
tells the optimizer the segment's observations (:meth:`FitAhead.finish`).

Anything that goes wrong in the child (an exception, the child dying) costs only the head
start: the driver warns, installs nothing, and the next ``suggest()`` fits as usual.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fms_lightning.optimizer import FMSOptimizer

__all__ = ["FitAhead", "fork_available"]

log = logging.getLogger(__name__)


def fork_available() -> bool:
    """Whether this platform can fork processes (Linux, macOS), which fitting while training needs."""
    return "fork" in multiprocessing.get_all_start_methods()


class FitAhead:
    """One :meth:`FMSOptimizer.fit_ahead` in a forked child, started before a segment trains.

    Args:
        opt: The driver's optimizer. It must not change between :meth:`start` and
            :meth:`finish` (the tuner only trains in between).
    """

    def __init__(self, opt: FMSOptimizer) -> None:
        self.opt = opt
        self._process: Any = None
        self._conn: Any = None

    def start(self) -> bool:
        """Fork the child, which starts fitting at once; False (with a warning) if no process could be started."""
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(self.opt, send, os.getpid()), name="fms-fit-ahead", daemon=True)
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads; the child runs no other code
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                process.start()
        except (OSError, AssertionError) as err:  # out of processes; or this is a daemonic process, which may not fork
            receive.close()
            self._warn(f"no process could be started: {type(err).__name__}: {err}")
            return False
        finally:
            send.close()
        self._process, self._conn = process, receive
        return True

    def finish(self) -> float | None:
        """Wait for the child and install its fit in the optimizer; the seconds the child fit, or None.

        None when the child failed or died: it warns, and the optimizer is as before :meth:`start`.
        """
        try:
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            self._process.join()
            self._warn(f"the process fitting it ended without a result (exit code {self._process.exitcode})")
            return None
        finally:
            self._conn.close()
        self._process.join()
        import torch

        status, payload = torch.load(io.BytesIO(data), weights_only=True)
        if status != "ok":
            log.debug("fit ahead failed:\n%s", payload["traceback"])
            self._warn(payload["error"])
            return None
        self.opt._adopt_fit_ahead(payload["result"])
        return float(payload["seconds"])

    def cancel(self) -> None:
        """Stop the child (after an error in the driver); nothing is installed."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()  # SIGKILL: it holds nothing to clean up, and ignores no handler
        if self._process is not None:
            self._process.join()
        if self._conn is not None:
            self._conn.close()

    @staticmethod
    def _warn(reason: str) -> None:
        warnings.warn(f"Fitting the surrogate while the segment trained failed ({reason}); the next suggestion "
                      "fits it as usual.", RuntimeWarning, stacklevel=3)


def _detach(parent: int, keep: int) -> None:
    """In the child: close the driver's files (its study and storage locks among them: flock locks are held
    while any process has the file open) and, on Linux, die with the driver."""
    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before that
        os._exit(0)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - POSIX has it
        return 65536


def _child(opt: FMSOptimizer, conn: Any, parent: int) -> None:
    """The forked process: fit ahead, send the result, exit without running the driver's exit handlers."""
    import torch

    _detach(parent, conn.fileno())
    if opt.surrogate_threads is None:  # one intra-op thread: an OpenMP pool the driver used may not survive a fork
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        opt.fit_ahead()
        out: tuple[str, dict[str, Any]] = ("ok", {"result": opt._fit_ahead_result(),
                                                  "seconds": time.perf_counter() - t0})
    except BaseException as err:  # noqa: BLE001 - reported to the driver, which falls back to a normal fit
        out = ("error", {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
    buf = io.BytesIO()
    torch.save(out, buf)
    try:
        conn.send_bytes(buf.getvalue())
        conn.close()
    finally:
        os._exit(0)
