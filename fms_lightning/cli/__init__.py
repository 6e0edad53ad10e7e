"""The ``fms-lightning`` command.

Subcommands:

- ``demo [RECIPE] [key=value ...]``: train the digits CNN with a NAdamW-list preset.
- ``presets [--list FILE] [--format table|yaml]``: print a NAdamW hyperparameter list.
- ``tune [RECIPE] [key=value ...]``: run Forecasting Model Search from a recipe.
- ``status STUDY_DIR``: trials, the best result so far, and the budget used.
- ``export STUDY_DIR OUT_DIR [--trial N]``: the best weights and their config.
- ``lists build ...``: build an ordered hyperparameter list from your own trials.
- ``sweep [RECIPE] --top K``: train the first K presets of a list, in parallel.
- ``bench build|run|report``: cached HPO benchmarks and ``BENCHMARKS.md``.

Each sub-command is a module with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from fms_lightning.cli import demo, export, presets, status, tune
from fms_lightning.errors import FMSError

__all__ = ["main"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_MAX_ERROR = 600


def _one_line(text: str) -> str:
    """An error message as one line: no terminal colour codes, no line breaks, not endless."""
    text = " ".join(part.strip() for part in _ANSI.sub("", str(text)).splitlines() if part.strip())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3].rstrip() + "..."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _cwd_on_path() -> None:
    """Let ``module=pkg.mod:attr`` (and hub factories) import from the current folder, as ``python -m`` does."""
    import os

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _parser() -> argparse.ArgumentParser:
    from fms_lightning.bench.cli import register as register_bench
    from fms_lightning.optim import lists, sweep_cli

    parser = _Parser(prog="fms-lightning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, presets, tune, status, export, lists, sweep_cli):
        command.register(sub)
    register_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "demo key=value" without a recipe: treat the first key=value as an override.
    defaults = {"demo": demo.DEFAULT_RECIPE, "tune": tune.DEFAULT_RECIPE}
    if len(argv) >= 2 and argv[0] in defaults and "=" in argv[1]:
        argv.insert(1, defaults[argv[0]])
    # key=value overrides may also come after options ("sweep RECIPE --top 5 trainer.max_epochs=3").
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _cwd_on_path()
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `fms-lightning status DIR | head`
        sys.stderr.close()
        return 0
    except (FMSError, OSError) as err:  # a bad input, or a file that cannot be read or written
        print(f"fms-lightning: error: {type(err).__name__}: {_one_line(str(err))}", file=sys.stderr)
        return 2
