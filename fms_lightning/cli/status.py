"""``fms-lightning status STUDY_DIR``: trials, the best result so far, and the budget used."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
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
        tuned, total = study.budget_used(source="tuner"), study.budget_used()
        budget = f"budget used {tuned} epochs by the tuner"
        if total > tuned:
            budget += f" (+{total - tuned} epochs of runs recorded by WeightSnapshot)"
        guessed = " (mode guessed from the name; pass --mode)" if source == "guessed" else ""
        print(f"study {args.study_dir}: {len(trials)} trials ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
              f"{budget}; method {settings.get('method', '-')}, monitor {monitor or '-'} ({mode}){guessed}")
        tuner_rows = [r for r in board if study.trial(r.trial_id).source == "tuner"]
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


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``status`` to ``subparsers``; returns its parser (``func`` runs it)."""
    status = subparsers.add_parser("status", help="summarise a study folder")
    status.add_argument("study_dir")
    status.add_argument("--mode", choices=("min", "max"), default=None,
                        help="rank by this mode (default: the study's; for recorded runs without one, guessed)")
    status.set_defaults(func=_run)
    return status
