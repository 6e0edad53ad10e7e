"""``fms-lightning demo [RECIPE] [key=value ...]``: train the digits CNN with one NAdamW-list preset."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_RECIPE", "register"]

#: The recipe of ``fms-lightning demo`` without one.
DEFAULT_RECIPE = "digits_demo"


def _run(args: argparse.Namespace) -> int:
    from fms_lightning.recipes import builtin, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    builtin("demo")(cfg, progress=args.progress)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``demo`` to ``subparsers``; returns its parser (``func`` runs it)."""
    demo = subparsers.add_parser("demo", help="train the digits CNN with one NAdamW-list preset")
    demo.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe name or YAML path")
    demo.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=nadamw-list/3")
    demo.add_argument("--progress", action="store_true", help="also show Lightning's progress bar")
    demo.set_defaults(func=_run)
    return demo
