"""``fms-lightning export STUDY_DIR OUT_DIR [--trial N]``: a study's best weights and their config."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from fms_lightning.result import best_result, study_objective
    from fms_lightning.study import Study

    with Study(args.study_dir, readonly=True) as study:
        monitor, mode, _ = study_objective(study, mode=args.mode)
        result = best_result(study, mode, monitor=monitor, trial_id=args.trial)
        out = result.export_best(args.out_dir)
    print(f"exported trial {result.best_trial_id} at epoch {result.best_epoch} ({monitor or 'value'}="
          f"{result.best_value:.4f}, hub entry {result.best_hub_entry}) to {out}: weights.safetensors, config.yaml")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` to ``subparsers``; returns its parser (``func`` runs it)."""
    export = subparsers.add_parser("export", help="copy a study's best weights and their config to a folder")
    export.add_argument("study_dir")
    export.add_argument("out_dir", help="gets weights.safetensors (the LightningModule's state_dict) and config.yaml")
    export.add_argument("--trial", type=int, default=None, help="the best epoch of this trial instead")
    export.add_argument("--mode", choices=("min", "max"), default=None, help="as for status")
    export.set_defaults(func=_run)
    return export
