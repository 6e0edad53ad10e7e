"""The result of a tuning run: the tuner's trials ranked, the best one, and the study's plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fms_lightning.errors import TrialFailedError
from fms_lightning.result import TuneResult, best_result, leaderboard, plot_study
from fms_lightning.study import Study
from fms_lightning.tuner.sync import TUNER

__all__ = ["build_result"]


def build_result(study: Study, mode: str, monitor: str, study_dir: Path) -> TuneResult:
    """The :class:`~fms_lightning.result.TuneResult` of the tuner's trials.

    Raises:
        TrialFailedError: If every trial failed (the message quotes the reasons).
    """
    board = leaderboard(study, mode, trials=study.trials(source=TUNER))
    if not board or board[0].best_value is None:
        reasons = [f"trial {r.trial_id}: {r.reason}" for r in board if r.reason]
        where = study_dir / "failures"
        hint = f"\nTracebacks are in {where}." if where.is_dir() else ""
        raise TrialFailedError("Every trial failed. Reasons:\n  " + "\n  ".join(reasons or ["(none recorded)"]) + hint)
    plot = plot_study(study, mode, study_dir / "study.png", monitor=monitor)
    result = best_result(study, mode, tuner_only=True)
    return replace(result, study_dir=str(study_dir), plot=plot)
