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
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

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


def _cmd_tune(args: argparse.Namespace) -> int:
    from fms_lightning.recipe_tune import run_tune_recipe
    from fms_lightning.recipes import load_recipe

    overrides = [*args.overrides, *(["trust_hub_code=true"] if args.trust_hub_code else [])]
    run_tune_recipe(load_recipe(args.recipe, overrides))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fms_lightning.result import leaderboard, study_objective
    from fms_lightning.study import Study

    with Study(args.study_dir, readonly=True) as study:
        settings = study.get_meta("tuner_settings") or {}
        monitor, mode, source = study_objective(study, mode=args.mode)
        trials = study.trials()
        board = leaderboard(study, mode, trials=trials, monitor=monitor)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
        tuned, total = study.budget_used(tuner_only=True), study.budget_used()
        budget = f"budget used {tuned} epochs by the tuner"
        if total > tuned:
            budget += f" (+{total - tuned} epochs of runs recorded by WeightSnapshot)"
        guessed = " (mode guessed from the name; pass --mode)" if source == "guessed" else ""
        print(f"study {args.study_dir}: {len(trials)} trials ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
              f"{budget}; method {settings.get('method', '-')}, monitor {monitor or '-'} ({mode}){guessed}")
        tuner_rows = [r for r in board if study.trial(r.trial_id).opt_trial_id is not None]
        top = next((r for r in (tuner_rows or board) if r.best_value is not None), None)
        if top is not None:
            kind = "" if tuner_rows else " (a recorded run)"
            print(f"best: {top.best_value:.4f} at epoch {top.best_epoch} of trial {top.trial_id}{kind} "
                  f"(hub entry {top.hub_entry})")
        print(f"{'trial':>5}  {'status':<10}{'hub entry':<16}{'epochs':>6}  {'best':>8}  reason")
        for r in sorted(board, key=lambda r: r.trial_id):
            best_s = f"{r.best_value:.4f}" if r.best_value is not None else "-"
            print(f"{r.trial_id:>5}  {r.status:<10}{str(r.hub_entry or '-'):<16}{r.epochs:>6}  {best_s:>8}  {r.reason or ''}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fms_lightning.result import best_result, study_objective
    from fms_lightning.study import Study

    with Study(args.study_dir, readonly=True) as study:
        monitor, mode, _ = study_objective(study, mode=args.mode)
        result = best_result(study, mode, monitor=monitor, trial_id=args.trial)
        out = result.export_best(args.out_dir)
    print(f"exported trial {result.best_trial_id} at epoch {result.best_epoch} ({monitor or 'value'}="
          f"{result.best_value:.4f}, hub entry {result.best_hub_entry}) to {out}: weights.safetensors, config.yaml")
    return 0


def _cwd_on_path() -> None:
    """Let ``module=pkg.mod:attr`` (and hub factories) import from the current folder, as ``python -m`` does."""
    import os

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fms-lightning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the digits CNN with one NAdamW-list preset")
    demo.add_argument("recipe", nargs="?", default="digits_demo", help="recipe name or YAML path")
    demo.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=nadamw-list/3")
    demo.add_argument("--progress", action="store_true", help="also show Lightning's progress bar")
    demo.set_defaults(func=_cmd_demo)

    presets = sub.add_parser("presets", help="print a NAdamW hyperparameter list")
    presets.add_argument("--list", help="a list YAML of your own (default: the built-in NADAMW_LIST)")
    presets.add_argument("--format", choices=("table", "yaml"), default="table")
    presets.set_defaults(func=_cmd_presets)

    tune = sub.add_parser("tune", help="run Forecasting Model Search from a recipe (the main job; default: the digits hub)")
    tune.add_argument("recipe", nargs="?", default="digits_hub", help="recipe name or YAML path")
    tune.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=dyhpo budget_epochs=20")
    tune.add_argument("--trust-hub-code", action="store_true",
                      help="let the hub folder's manifest run any code it names (its factories); only for hubs "
                      "whose code you trust. Without it only the library's factories and the recipe's "
                      "trusted_factories may be used.")
    tune.set_defaults(func=_cmd_tune)

    status = sub.add_parser("status", help="summarise a study folder")
    status.add_argument("study_dir")
    status.add_argument("--mode", choices=("min", "max"), default=None,
                        help="rank by this mode (default: the study's; for recorded runs without one, guessed)")
    status.set_defaults(func=_cmd_status)

    export = sub.add_parser("export", help="copy a study's best weights and their config to a folder")
    export.add_argument("study_dir")
    export.add_argument("out_dir", help="gets weights.safetensors (the LightningModule's state_dict) and config.yaml")
    export.add_argument("--trial", type=int, default=None, help="the best epoch of this trial instead")
    export.add_argument("--mode", choices=("min", "max"), default=None, help="as for status")
    export.set_defaults(func=_cmd_export)

    from fms_lightning.bench.cli import register as register_bench
    from fms_lightning.optim import lists, sweep_cli

    lists.register(sub)
    sweep_cli.register(sub)
    register_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "demo key=value" without a recipe: treat the first key=value as an override.
    defaults = {"demo": "digits_demo", "tune": "digits_hub"}
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
