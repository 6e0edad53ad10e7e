"""``fms-lightning presets [--list FILE] [--format table|yaml]``: print a NAdamW hyperparameter list."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
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


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``presets`` to ``subparsers``; returns its parser (``func`` runs it)."""
    presets = subparsers.add_parser("presets", help="print a NAdamW hyperparameter list")
    presets.add_argument("--list", help="a list YAML of your own (default: the built-in NADAMW_LIST)")
    presets.add_argument("--format", choices=("table", "yaml"), default="table")
    presets.set_defaults(func=_run)
    return presets
