"""Each sub-command module of fms_lightning.cli registers its parser; the package wires them into one command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from fms_lightning.cli import demo, export, main, presets, status, tune


def _sub() -> argparse._SubParsersAction:
    return argparse.ArgumentParser(prog="x").add_subparsers(dest="command")


@pytest.mark.parametrize(
    ("module", "argv", "expected"),
    [
        (demo, ["demo"], {"recipe": "digits_demo", "overrides": [], "progress": False}),
        (demo, ["demo", "mine.yaml", "seed=1", "--progress"], {"recipe": "mine.yaml", "overrides": ["seed=1"],
                                                               "progress": True}),
        (tune, ["tune"], {"recipe": "digits_hub", "overrides": [], "trust_hub_code": False}),
        (tune, ["tune", "r.yaml", "--trust-hub-code"], {"recipe": "r.yaml", "trust_hub_code": True}),
        (presets, ["presets"], {"list": None, "format": "table"}),
        (status, ["status", "s", "--mode", "min"], {"study_dir": "s", "mode": "min"}),
        (export, ["export", "s", "o", "--trial", "3"], {"study_dir": "s", "out_dir": "o", "trial": 3, "mode": None}),
    ],
)
def test_each_module_registers_its_subcommand(module, argv, expected) -> None:
    sub = _sub()
    module.register(sub)
    args = sub._name_parser_map[argv[0]].parse_args(argv[1:])
    assert {k: getattr(args, k) for k in expected} == expected and callable(args.func)


def test_demo_and_tune_take_a_key_value_as_an_override_of_their_default_recipe(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr("fms_lightning.recipe_tune.run_tune_recipe", lambda cfg: seen.append(cfg))
    assert main(["tune", "budget_epochs=3"]) == 0
    assert seen[0].budget_epochs == 3 and seen[0].hub == "digits"  # the digits_hub recipe, overridden


def test_an_unknown_recipe_is_one_line_and_exit_status_2(capsys) -> None:
    assert main(["demo", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No recipe file or shipped recipe named 'no_such_recipe'" in err


def test_python_dash_m_runs_the_command() -> None:
    for module in ("fms_lightning", "fms_lightning.cli"):
        exe = subprocess.run([sys.executable, "-m", module, "presets"], capture_output=True, text=True)
        assert exe.returncode == 0 and "nadamw-list/5" in exe.stdout, module


def test_the_cli_and_the_recipe_machinery_do_not_import_the_examples() -> None:
    code = ("import sys, fms_lightning.cli, fms_lightning.recipe_tune, fms_lightning.optim.sweep_cli, "
            "fms_lightning.optim.recipe; from fms_lightning.cli import _parser; _parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('fms_lightning.examples')))")
    exe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert exe.returncode == 0 and exe.stdout.strip() == "[]", exe.stderr
