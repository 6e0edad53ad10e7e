"""The fms-lightning command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
                 ["sweep", "--top", "2"], ["demo"], ["presets"], ["bench", "report"]):
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
