"""``python -m fms_lightning.bench build|run|report`` (the same as ``fms-lightning bench ...``)."""

from __future__ import annotations

import argparse
import sys

from fms_lightning.bench.cli import register
from fms_lightning.errors import FMSError


def main(argv: list[str] | None = None) -> int:
    """Run the ``bench`` command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fms_lightning.bench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except FMSError as err:
        print(f"fms_lightning.bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
