"""The fms-lightning command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from fms_lightning.cli import main
from fms_lightning.optim import NADAMW_LIST


def test_presets_prints_the_table(capsys) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for i, point in enumerate(NADAMW_LIST, 1):
        assert f"nadamw-list/{i}" in out and repr(point.lr) in out


def test_presets_yaml_round_trips(capsys, tmp_path) -> None:
    from fms_lightning.optim import load_hparam_list

    assert main(["presets", "--format", "yaml"]) == 0
    path = tmp_path / "list.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_hparam_list(path) == NADAMW_LIST


def test_library_errors_become_exit_status_2(capsys, tmp_path) -> None:
    assert main(["presets", "--list", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = subprocess.run([sys.executable, "-m", "fms_lightning.cli", "presets"], capture_output=True, text=True)
    assert exe.returncode == 0 and "nadamw-list/5" in exe.stdout


def test_every_subcommand_is_wired(capsys) -> None:
    from fms_lightning.cli import _parser

    parser = _parser()
    for argv in (["tune"], ["status", "dir"], ["lists", "build", "--csv", "t.csv", "-k", "2", "-o", "l.yaml"],
                 ["sweep", "--top", "2"], ["demo"], ["presets"], ["bench", "report"], ["export", "s", "o"]):
        assert callable(parser.parse_args(argv).func), argv


def test_overrides_may_follow_the_options(monkeypatch) -> None:
    """The README's `sweep digits_demo --top 5 --parallel 2 trainer.max_epochs=10` form."""
    from fms_lightning.optim import sweep_cli

    seen = {}

    def fake_run(cfg, **kw):
        seen.update(cfg=cfg, **kw)

    monkeypatch.setattr(sweep_cli, "run_sweep_recipe", fake_run)
    assert main(["sweep", "digits_demo", "--top", "2", "--parallel", "1", "trainer.max_epochs=3", "seed=4"]) == 0
    assert seen["cfg"].trainer.max_epochs == 3 and seen["cfg"].seed == 4 and seen["top"] == 2
    with pytest.raises(SystemExit):
        main(["sweep", "digits_demo", "--top", "2", "--bogus"])
    with pytest.raises(SystemExit):
        main(["presets", "seed=4"])  # presets takes no overrides


def _record(study_dir, *, epochs=3, **snapshot):
    """An ordinary Trainer.fit with WeightSnapshot (the tiny task's model, also logging val_loss)."""
    import lightning.pytorch as pl
    import torch

    from fms_lightning.callbacks import WeightSnapshot
    from tests import tiny_task

    class TwoMetrics(tiny_task.TinyModule):
        def validation_step(self, batch, batch_idx):
            super().validation_step(batch, batch_idx)
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[WeightSnapshot(study_dir, **snapshot)])
    trainer.fit(TwoMetrics(tiny_task.make_mlp(), 0.3), datamodule=tiny_task.TinyData())


@pytest.mark.parametrize("mode", ["min", None])
def test_status_of_a_study_only_weight_snapshot_wrote(tmp_path, capsys, mode) -> None:
    from fms_lightning.study import Study

    _record(tmp_path / "study", monitor="val_loss", mode=mode, config={"lr": 0.3})
    with Study(tmp_path / "study", readonly=True) as study:
        obs = study.observations(1)
    best = min(obs, key=lambda o: o.value)
    assert main(["status", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert "monitor val_loss (min)" in out
    assert ("mode guessed" in out) == (mode is None)
    assert f"best: {best.value:.4f} at epoch {best.epoch} of trial 1 (a recorded run)" in out
    assert "budget used 0 epochs by the tuner (+3 epochs of runs recorded by WeightSnapshot)" in out
    assert main(["status", str(tmp_path / "study"), "--mode", "max"]) == 0
    worst = max(obs, key=lambda o: o.value)
    assert f"best: {worst.value:.4f} at epoch {worst.epoch}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [".lock", "snapshots", "study.sqlite"]


def test_status_and_export_of_a_mixed_study(tmp_path, capsys) -> None:
    from fms_lightning.study import Study, load_weights_file
    from fms_lightning.tuner import FMSTuner
    from tests import tiny_task

    hub = tiny_task.make_hub(tmp_path / "hub")
    _record(tmp_path / "study", monitor="val_acc", mode="max", config={"lr": 0.3})
    result = FMSTuner(tiny_task.build, tiny_task.datamodule, tiny_task.space(hub), hub, monitor="val_acc", mode="max",
                      budget_epochs=2, max_epochs_per_trial=2, method="dyhpo", study_dir=tmp_path / "study",
                      optimizer_kwargs=tiny_task.FAST_OPT, progress=False).fit()
    assert main(["status", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert f"budget used {result.budget_used} epochs by the tuner (+3 epochs of runs recorded" in out
    assert f"best: {result.best_value:.4f} at epoch {result.best_epoch} of trial {result.best_trial_id} (hub" in out
    assert main(["export", str(tmp_path / "study"), str(tmp_path / "best")]) == 0
    assert f"exported trial {result.best_trial_id} at epoch {result.best_epoch}" in capsys.readouterr().out
    exported = load_weights_file(tmp_path / "best" / "weights.safetensors")
    with Study(tmp_path / "study", readonly=True) as study:
        expected = load_weights_file(result.best_checkpoint)
        assert yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())["trial_id"] == result.best_trial_id
    assert exported.keys() == expected.keys() and all((exported[k] == expected[k]).all() for k in exported)
    assert main(["export", str(tmp_path / "study"), str(tmp_path / "rec"), "--trial", "1"]) == 0
    assert "exported trial 1 at epoch" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "study"), str(tmp_path / "x"), "--trial", "99"]) == 2


def test_recipe_objects_import_from_the_current_folder_like_python_m(tmp_path) -> None:
    """`fms-lightning tune recipe.yaml module=mypkg.mod:attr` finds ./mypkg without PYTHONPATH."""
    import os
    from pathlib import Path

    pkg = tmp_path / "winelib_cli_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("def build(config, hub_entry):\n    raise NotImplementedError\n")
    recipe = {"hub": None, "study_dir": "study", "search_space": {"lr": {"type": "log_uniform", "low": 1e-3, "high": 0.1}},
              "module": "winelib_cli_probe.models:build", "datamodule": "winelib_cli_probe.models:missing"}
    (tmp_path / "my_recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).with_name("fms-lightning")  # the installed console script, as a user runs it
    done = subprocess.run([str(exe), "tune", "my_recipe.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    # build was imported from ./winelib_cli_probe; only the (deliberately) missing datamodule fails.
    assert done.returncode == 2, done.stderr
    assert "has no attribute 'missing'" in done.stderr and "No module named" not in done.stderr
