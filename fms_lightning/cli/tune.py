"""``fms-lightning tune [RECIPE] [key=value ...]``: run Forecasting Model Search from a recipe."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_RECIPE", "register"]

#: The recipe of ``fms-lightning tune`` without one: the embedded digits hub (``make demo``).
DEFAULT_RECIPE = "digits_hub"


def _run(args: argparse.Namespace) -> int:
    from fms_lightning.recipe_tune import run_tune_recipe
    from fms_lightning.recipes import load_recipe

    overrides = [*args.overrides, *(["trust_hub_code=true"] if args.trust_hub_code else [])]
    run_tune_recipe(load_recipe(args.recipe, overrides))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``tune`` to ``subparsers``; returns its parser (``func`` runs it)."""
    tune = subparsers.add_parser(
        "tune", help="run Forecasting Model Search from a recipe (the main job; default: the digits hub)")
    tune.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe name or YAML path")
    tune.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=dyhpo budget_epochs=20")
    tune.add_argument("--trust-hub-code", action="store_true",
                      help="let the hub folder's manifest run any code it names (its factories); only for hubs "
                      "whose code you trust. Without it only the library's factories and the recipe's "
                      "trusted_factories may be used.")
    tune.set_defaults(func=_run)
    return tune
