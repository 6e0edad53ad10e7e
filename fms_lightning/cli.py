"""The ``fms-lightning`` command.

Subcommands:

- ``demo [RECIPE] [key=value ...]``: train the digits CNN with a NAdamW-list preset.
- ``presets [--list FILE] [--format table|yaml]``: print a NAdamW hyperparameter list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fms_lightning.errors import FMSError

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from fms_lightning.examples.demo import run_demo
    from fms_lightning.recipes import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    run_demo(cfg, progress=args.progress)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from fms_lightning.optim.presets import NADAMW_LIST, PRESET_NAMES, format_table, load_hparam_list

    if args.list:
        points = load_hparam_list(args.list)
        names = [f"#{i}" for i in range(1, len(points) + 1)]
    else:
        points, names = NADAMW_LIST, list(PRESET_NAMES)
    if args.format == "yaml":
        import yaml

        data = {"points": [{"name": n, **p.to_dict()} for n, p in zip(names, points)]}
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(format_table(points, names))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fms-lightning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the digits CNN with a NAdamW-list preset (the main job)")
    demo.add_argument("recipe", nargs="?", default="digits_demo", help="recipe name or YAML path")
    demo.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=nadamw-list/3")
    demo.add_argument("--progress", action="store_true", help="also show Lightning's progress bar")
    demo.set_defaults(func=_cmd_demo)

    presets = sub.add_parser("presets", help="print a NAdamW hyperparameter list")
    presets.add_argument("--list", help="a list YAML of your own (default: the built-in NADAMW_LIST)")
    presets.add_argument("--format", choices=("table", "yaml"), default="table")
    presets.set_defaults(func=_cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "demo key=value" without a recipe: treat the first key=value as an override.
    if len(argv) >= 2 and argv[0] == "demo" and "=" in argv[1]:
        argv.insert(1, "digits_demo")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FMSError as err:
        print(f"fms-lightning: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
