"""A progress bar over the tuning budget that shows the incumbent."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BudgetProgress"]


class BudgetProgress:
    """``tqdm`` over budget epochs; silent when disabled or when tqdm is missing."""

    def __init__(self, total: int, *, enabled: bool = True, initial: int = 0) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with lightning
                return
            self._bar = tqdm(total=total, initial=min(initial, total), unit="epoch", desc="FMS budget",
                             file=sys.stderr, dynamic_ncols=True)

    def update_to(self, used: int, incumbent: float | None, *, running: int | None = None) -> None:
        """Move the bar to ``used`` epochs; show the incumbent value and, if given, the trials in flight."""
        if self._bar is None:
            return
        self._bar.n = min(used, self._bar.total)
        parts = [] if incumbent is None else [f"best={incumbent:.4f}"]
        if running is not None:
            parts.append(f"running={running}")
        if parts:
            self._bar.set_postfix_str(" ".join(parts), refresh=False)
        self._bar.refresh()

    def __enter__(self) -> BudgetProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
