"""List sweeps: the first K presets of a list as K Lightning runs, sequential and in parallel processes."""

from __future__ import annotations

import argparse
import dataclasses
import functools

import pytest

from fms_lightning.errors import ConfigurationError, MissingMetricError, TrialFailedError
from fms_lightning.examples.digits import DigitsCNN
from fms_lightning.examples.sklearn_data import SklearnDataModule
from fms_lightning.optim import NADAMW_LIST, NAdamWListModule, dump_hparam_list
from fms_lightning.optim.sweep import SweepResult, SweepTrial, sweep
from fms_lightning.optim.sweep_cli import register, run_sweep_recipe

SMALL = functools.partial(DigitsCNN, channels=(4, 8), hidden=16)


def _dm() -> SklearnDataModule:
    return SklearnDataModule("digits", batch_size=128, as_image=True)


def test_sequential_sweep_trains_the_first_k_presets() -> None:
    result = sweep(SMALL, _dm(), top=2, max_epochs=2)
    assert [t.rank for t in result.trials] == [1, 2]
    assert [t.point for t in result.trials] == list(NADAMW_LIST[:2])
    for t in result.trials:
        assert len(t.values) == 2 and t.error is None
        assert t.best_value == max(t.values) and t.values[t.best_epoch - 1] == t.best_value
        assert 0.0 <= t.best_value <= 1.0
    assert result.best.best_value == max(t.best_value for t in result.trials)
    table = result.format_table()
    assert "nadamw-list/1" in table and "nadamw-list/2" in table and "*" in table


def test_parallel_sweep_matches_sequential() -> None:
    kwargs = dict(top=2, max_epochs=1, hparam_list=NADAMW_LIST[1:3])
    seq = sweep(SMALL, _dm(), **kwargs)
    par = sweep(SMALL, _dm(), parallel=2, **kwargs)
    assert [t.point for t in par.trials] == list(NADAMW_LIST[1:3])
    # Same seed, same preset, deterministic CPU training: the same curves in another process.
    for a, b in zip(seq.trials, par.trials):
        assert b.values == pytest.approx(a.values, abs=1e-6)


def test_best_uses_mode_and_breaks_ties_by_rank() -> None:
    p = NADAMW_LIST[0]
    trials = (SweepTrial(1, p, (0.3,), 0.3, 1), SweepTrial(2, p, (0.1,), 0.1, 1), SweepTrial(3, p, (0.3,), 0.3, 1),
              SweepTrial(4, p, (), None, None, "RuntimeError: boom"))
    assert SweepResult(trials, "val_acc", "max").best.rank == 1
    assert SweepResult(trials, "val_loss", "min").best.rank == 2
    assert "failed" in SweepResult(trials, "val_acc", "max").format_table()
    with pytest.raises(TrialFailedError, match="#1: x"):
        SweepResult((SweepTrial(1, p, (), None, None, "x"),), "val_acc", "max").best


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top": 6}, r"top must be an integer in 1\.\.5"),
        ({"top": 0}, r"top must be an integer in 1\.\.5"),
        ({"parallel": 0}, "parallel must be an integer >= 1, got 0"),
        ({"mode": "up"}, "mode must be 'min' or 'max'"),
        ({"max_epochs": 0}, "max_epochs must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    options = {"top": 1, "max_epochs": 1, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        sweep(SMALL, _dm(), **options)


def test_unpicklable_factory_with_parallel() -> None:
    with pytest.raises(ConfigurationError, match="must be picklable"):
        sweep(lambda p: SMALL(p), _dm(), top=2, max_epochs=1, parallel=2)


def test_missing_metric_and_wrong_module() -> None:
    with pytest.raises(MissingMetricError, match="monitors 'val_f1'.*'val_acc'"):
        sweep(SMALL, _dm(), top=1, max_epochs=1, monitor="val_f1", trainer_kwargs={"limit_train_batches": 2})
    with pytest.raises(ConfigurationError, match="must return a NAdamWListModule"):
        sweep(lambda p: object(), _dm(), top=1, max_epochs=1)  # type: ignore[arg-type, return-value]


def test_recipe_and_cli(tmp_path, capsys) -> None:
    points = [dataclasses.replace(NADAMW_LIST[4], lr=3e-3), NADAMW_LIST[0]]
    dump_hparam_list(points, tmp_path / "mine.yaml")
    parser = argparse.ArgumentParser(prog="fms-lightning")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "sweep", "trainer.max_epochs=1", "model.channels=[4,8]", "model.hidden=16", "data.batch_size=128",
        "--top", "2", "--list", str(tmp_path / "mine.yaml"), "--parallel", "1",
    ])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Sweeping the first 2 presets" in out and "best: rank" in out and "#1" in out
    with pytest.raises(ConfigurationError, match="trainer.max_epochs"):
        run_sweep_recipe({"data": {}, "model": {}, "trainer": {}}, top=1)


def test_recipe_with_an_imported_module(capsys) -> None:
    cfg = {
        "module": "fms_lightning.examples.digits:DigitsCNN",
        "datamodule": "fms_lightning.examples.sklearn_data:SklearnDataModule",
        "data": {"name": "digits", "as_image": True, "batch_size": 128},
        "model": {"channels": [4, 8], "hidden": 16},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3},
        "monitor": "val_loss",
        "mode": "min",
    }
    result = run_sweep_recipe(cfg, top=1)
    assert result.mode == "min" and result.best.rank == 1
    assert "monitoring val_loss (min)" in capsys.readouterr().out
    with pytest.raises(ConfigurationError, match="Cannot import 'nowhere:thing'"):
        run_sweep_recipe({**cfg, "module": "nowhere:thing"}, top=1)


def test_cli_module_does_not_import_lightning() -> None:
    import subprocess
    import sys

    code = "import sys, fms_lightning.optim.sweep_cli, fms_lightning.optim.lists; print('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


class TabularMLP(NAdamWListModule):  # a user's own model, for feature vectors
    def __init__(self, preset=1, *, features: int = 13, classes: int = 3) -> None:
        import torch.nn as nn

        super().__init__(preset)
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())


def test_recipe_on_tabular_data_does_not_force_images(capsys) -> None:
    """A demo-format recipe with data.name: wine and a module of the user's own (it used to demand as_image)."""
    cfg = {"module": "tests.optim.test_sweep:TabularMLP", "data": {"name": "wine", "batch_size": 32},
           "model": {"features": 13}, "trainer": {"max_epochs": 2}}
    result = run_sweep_recipe(cfg, top=1)
    assert len(result.trials[0].values) == 2 and result.trials[0].error is None
    with pytest.raises(ConfigurationError, match=r"data.name='wine' needs a model of your own: add 'module:"):
        run_sweep_recipe({"data": {"name": "wine"}, "model": {}, "trainer": {"max_epochs": 1}}, top=1)
