"""study.png and the best-epoch summary of a study (fms_lightning/result.py)."""

from __future__ import annotations

import pytest

from fms_lightning.errors import StudyError
from fms_lightning.result import _draw_study, best_result, leaderboard, study_objective
from fms_lightning.study import Study


def _loss_study(path) -> Study:
    """A min-mode study: 6 trials stopped after epoch 1 (one an outlier), 2 trained for 4 epochs."""
    study = Study(path)
    study.set_meta("tuner_settings", {"monitor": "val_loss", "mode": "min"})
    firsts = [0.30, 0.28, 0.35, 0.31, 0.96, 0.29]
    for k, v in enumerate(firsts):
        tid = study.add_trial({"lr": 0.1 * (k + 1)}, "mlp8", opt_trial_id=k)
        study.add_observation(tid, 1, v, metrics={"val_loss": v}, snapshot=f"s/{tid}_1")
    for k, curve in enumerate(([0.25, 0.12, 0.06, 0.05], [0.27, 0.20, 0.15, 0.10])):
        tid = study.add_trial({"lr": 0.01 * (k + 1)}, "mlp16", opt_trial_id=10 + k)
        for e, v in enumerate(curve, 1):
            study.add_observation(tid, e, v, metrics={"val_loss": v}, snapshot=f"s/{tid}_{e}")
    return study


def test_learning_curves_are_lines_and_the_y_axis_ignores_bad_outliers(tmp_path) -> None:
    with _loss_study(tmp_path / "s") as study:
        fig = _draw_study(study, "min", monitor="val_loss")
    curves, incumbent = fig.axes
    lines = [ln for ln in curves.get_lines() if len(ln.get_xdata()) > 1]
    assert len(lines) == 2 and all(ln.get_linestyle() == "-" for ln in lines)
    low, high = curves.get_ylim()
    assert low < 0.05 and 0.35 < high < 0.96  # the best value is shown, the 0.96 outlier is not
    assert "1 worse value(s) off the scale" in curves.get_title() and "6 stopped after epoch 1" in curves.get_title()
    low, high = incumbent.get_ylim()
    assert low < 0.05 and high < 0.96
    with _loss_study(tmp_path / "s2") as study:  # the same values in max mode keep every high value instead
        fig = _draw_study(study, "max", monitor="val_loss")
    low, high = fig.axes[0].get_ylim()
    assert high > 0.96 and low > 0.0


def test_best_result_follows_the_mode_and_the_tuners_trials(tmp_path) -> None:
    with _loss_study(tmp_path / "s") as study:
        tid = study.add_trial({"lr": 0.5}, "mlp8", source="callback")  # a recorded run, better than any
        study.add_observation(tid, 1, 0.01, metrics={"val_loss": 0.01}, snapshot="s/r")
        best = best_result(study, "min", monitor="val_loss")
        assert (best.best_value, best.best_epoch, best.best_hub_entry) == (0.05, 4, "mlp16")
        assert best_result(study, "min", monitor="val_loss", tuner_only=False).best_trial_id == tid
        assert best_result(study, "max", monitor="val_loss").best_value == 0.96
        assert best_result(study, "min", trial_id=8).best_value == 0.10
        with pytest.raises(StudyError, match="No observations of val_acc"):
            best_result(study, "max", monitor="val_acc")


def test_recorded_runs_are_read_in_the_studys_monitor(tmp_path) -> None:
    with Study(tmp_path / "s") as study:
        tid = study.add_trial({"lr": 0.1}, source="callback")
        study.set_run_settings(tid, monitor="val_acc", mode="max")
        for e, (acc, loss) in enumerate(((0.5, 0.9), (0.7, 0.4), (0.6, 0.5)), 1):
            study.add_observation(tid, e, acc, metrics={"val_acc": acc, "val_loss": loss})
        assert study_objective(study) == ("val_acc", "max", "study")
        assert study_objective(study, mode="min") == ("val_acc", "min", "given")
        (row,) = leaderboard(study, "min", monitor="val_loss")
        assert (row.best_value, row.best_epoch) == (0.4, 2)
        (row,) = leaderboard(study, "max", monitor="val_acc")
        assert (row.best_value, row.best_epoch) == (0.7, 2)
        other = study.add_trial({"lr": 0.2}, source="callback")
        study.set_run_settings(other, monitor="val_loss")
        assert study_objective(study)[0] is None  # two monitors: none is the study's
    with Study(tmp_path / "guess") as study:
        study.set_run_settings(study.add_trial({}, source="callback"), monitor="train_error")
        assert study_objective(study) == ("train_error", "min", "guessed")
