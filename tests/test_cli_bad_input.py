"""Every wrong command line ends in exit status 2 and one line that names the error: never a traceback.

Each line runs ``fms_lightning.cli.main`` in this process and must fail before
anything is trained (the tune lines use a two-model hub of tiny MLPs, so no
hub is built either).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from fms_lightning.cli import main
from tests import tiny_task

HP = "0.001,0.05,0.9,0.99,0.01,0.0,0.1"


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("bad-input"))


def make_inputs(root: Path) -> Path:
    """A folder of good and bad inputs: a tiny recipe and hub, hostile and damaged files."""
    tiny_task.make_hub(root / "hub")
    entries = [{"name": f"mlp{w}", "factory": "tests.tiny_task:make_mlp", "kwargs": {"width": w},
                "weights": f"mlp{w}.safetensors"} for w in (8, 16)]
    (root / "hub" / "hub.yaml").write_text(yaml.safe_dump({"entries": entries}))
    (root / "evilhub").mkdir()
    (root / "evilhub" / "hub.yaml").write_text(yaml.safe_dump({"entries": [
        {"name": "evil", "factory": "os:system", "kwargs": {"command": f"touch {root / 'PWNED'}"}}]}))
    (root / "nomanifest").mkdir()
    recipe = {"method": "dyhpo", "budget_epochs": 2, "max_epochs_per_trial": 2, "hub": str(root / "hub"),
              "module": "tests.tiny_task:build", "datamodule": "tests.tiny_task:datamodule",
              "trusted_factories": ["tests.tiny_task:make_mlp"], "progress": False, "optimizer": tiny_task.FAST_OPT,
              "search_space": {"model": {"type": "hub", "values": "all"},
                               "lr": {"type": "log_uniform", "low": 1e-3, "high": 0.3}}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    (root / "malformed.yaml").write_text("a: [1, 2\n b: {")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage\x80")
    (root / "afile").write_text("x")
    from fms_lightning.optim import NADAMW_LIST, dump_hparam_list

    dump_hparam_list(NADAMW_LIST[:2], root / "mylist.yaml")
    (root / "garbage").mkdir()
    (root / "garbage" / "study.sqlite").write_bytes(os.urandom(4096))
    (root / "emptydb").mkdir()
    (root / "emptydb" / "study.sqlite").write_bytes(b"")
    header = "point,workload,step,budget,lr,warmup_fraction,beta1,beta2,weight_decay,dropout,label_smoothing"
    (root / "t.csv").write_text("\n".join([header, f"a,w1,5,10,{HP}", f"b,w1,3,10,{HP}"]) + "\n")
    return root


T = "{d}/tiny.yaml"
S = "study_dir={d}/studies/{n}"  # a fresh study folder per line: no line sees another's study

# (command line, what the one line must say). {d}: the fixture folder, {n}: the line's number.
BAD_LINES: list[tuple[list[str], str]] = [
    # the command line itself
    ([], r"required: command"),
    (["bogus"], r"invalid choice: 'bogus'"),
    (["tune", "--bogus"], r"unrecognized arguments: --bogus"),
    (["status"], r"required: study_dir"),
    (["status", "{d}", "--mode", "median"], r"invalid choice: 'median'"),
    (["presets", "--format", "xml"], r"invalid choice: 'xml'"),
    (["sweep", "--top", "abc"], r"invalid int value: 'abc'"),
    (["lists"], r"required: lists_command"),
    (["lists", "build"], r"required: -o/--output"),
    (["bench", "run", "--hub", "nope"], r"invalid choice: 'nope'"),
    (["bench", "run", "--seeds", "abc"], r"invalid int value"),
    # tune: recipes
    (["tune", "not_a_recipe"], r"UnknownPresetError: No recipe file or shipped recipe named 'not_a_recipe'"),
    (["tune", T, "budget_epochs"], r"ConfigurationError: Overrides must look like key=value"),
    (["tune", T, "=3"], r"ConfigurationError: Overrides must look like key=value"),
    (["tune", "{d}/malformed.yaml"], r"ConfigurationError: The recipe .*malformed.yaml' is not valid YAML"),
    (["tune", "{d}/list.yaml"], r"ConfigurationError: The recipe .*list.yaml' holds a ListConfig, not a mapping"),
    (["tune", "{d}/binary.yaml"], r"ConfigurationError: The recipe .*binary.yaml' is not valid YAML"),
    (["tune", T, S, "budget_epoch=3"], r"Bad tuning recipe key 'budget_epoch'.*accepted keys"),
    (["tune", T, S, "budget_epochs=lots"], r"'budget_epochs'.*type int"),
    (["tune", T, S, "budget_epochs=0"], r"budget_epochs must be at least one epoch"),
    (["tune", T, S, "budget_epochs=-5"], r"budget_epochs must be at least one epoch"),
    (["tune", T, S, "max_epochs_per_trial=0"], r"max_epochs_per_trial must be an integer >= 1"),
    (["tune", T, S, "method=bohb"], r"Unknown method 'bohb'"),
    (["tune", T, S, "mode=maximize"], r"mode must be 'min' or 'max'"),
    (["tune", T, S, "progress=maybe"], r"'progress'.*type bool"),
    (["tune", T, S, "seed=abc"], r"'seed'.*type int"),
    (["tune", T, S, "monitor="], r"'monitor'"),
    (["tune", T, S, "search_space={}"], r"search_space is empty"),
    (["tune", T, S, "search_space.lr.type=bogus"], r"Dimension 'lr': unknown type 'bogus'"),
    (["tune", T, S, "search_space.lr.low=abc"], r"low='abc' is not a finite number"),
    (["tune", T, S, "search_space.model.values=[nope]"], r"Hub dimension values \['nope'\] are not entries"),
    (["tune", T, S, "optimizer.bogus_option=1"], r"Unknown optimizer option 'bogus_option'"),
    (["tune", T, S, "optimizer.n_candidates=abc"], r"optimizer.n_candidates='abc' has the wrong type"),
    (["tune", T, S, "trainer.bogus=1"], r"Unknown trainer option 'bogus'"),
    (["tune", T, S, "trainer.max_epochs=3"], r"trainer.max_epochs cannot be set here.*max_epochs_per_trial"),
    (["tune", T, S, "trainer.max_epochs=abc"], r"trainer.max_epochs cannot be set here"),
    (["tune", T, S, "trainer.log_every_n_steps=often"], r"trainer.log_every_n_steps='often' has the wrong type"),
    (["tune", T, S, "executor=spark"], r"executor must be one of"),
    (["tune", T, S, "max_concurrent=2"], r"needs executor='ray'"),
    (["tune", T, S, "max_concurrent=0"], r"max_concurrent"),
    (["tune", T, S, "threads=0"], r"threads must be a positive integer"),
    (["tune", T, S, "storage=foo://bar"], r"Cannot open the storage URL 'foo://bar'"),
    (["tune", T, S, "storage=''"], r"storage must name a folder"),
    (["tune", T, "study_dir=''"], r"study_dir must name a folder"),
    (["tune", T, S, "max_consecutive_failures=0"], r"max_consecutive_failures must be an integer >= 1"),
    (["tune", T, S, "trusted_factories=os:system"], r"'trusted_factories'"),
    (["tune", T, S, "module=no.such:thing"], r"HubError: Cannot import 'no.such:thing'"),
    (["tune", T, S, "module=notacolon"], r"Expected 'package.module:attribute', got 'notacolon'"),
    (["tune", T, S, "module=os:getcwd"], r"build\(config, hub_entry\) raised TypeError"),
    # tune: hubs and study folders (hostile or damaged files)
    (["tune", T, S, "hub={d}/nonexistent"], r"HubError: The hub folder .* does not exist"),
    (["tune", T, S, "hub={d}/nomanifest"], r"HubError: No manifest in"),
    (["tune", T, S, "hub={d}/evilhub"], r"HubError: Hub entry 'evil' .*'os:system', which is not trusted"),
    (["tune", T, S, "trusted_factories=[]"], r"HubError: Hub entry 'mlp8' .* not trusted.*--trust-hub-code"),
    (["tune", T, "study_dir={d}/afile"], r"StudyError: The study folder .*afile' is a file, not a folder"),
    (["tune", T, "study_dir={d}/garbage"], r"StudyError: The study database .*study.sqlite' is corrupt"),
    # status
    (["status", "{d}/afile"], r"StudyError: The study folder .*afile' is a file"),
    (["status", "{d}/emptydb"], r"StudyError: .*is not a study database"),
    (["status", "{d}/garbage"], r"StudyError: The study database .* is corrupt"),
    (["status", "{d}/nonexistent"], r"StudyError: No study at"),
    # demo
    (["demo", "foo=bar"], r"Bad demo recipe key 'foo'.*accepted keys are preset"),
    (["demo", "data.foo=1"], r"Bad demo recipe key 'data.foo'"),
    (["demo", "trainer.max_epochs=abc"], r"trainer.max_epochs='abc' has the wrong type; expected an integer"),
    (["demo", "trainer.bogus=1"], r"Unknown trainer option 'bogus'"),
    (["demo", "trainer.logger=false"], r"trainer.logger cannot be set here"),
    (["demo", "trainer.accelerator=tpu"], r"trainer.accelerator cannot be set here"),
    (["demo", "trainer.precision=17"], r"trainer.precision=17 has the wrong type"),
    (["demo", "data.batch_size=abc"], r"Bad demo recipe key 'data.batch_size'"),
    (["demo", "data.name=nope"], r"Unknown dataset 'nope'"),
    (["demo", "data.val_fraction=2"], r"val_fraction must be in \(0, 1\)"),
    (["demo", "model.channels=abc"], r"Bad demo recipe key 'model.channels'"),
    (["demo", "model.hidden=-3"], r"Widths must be positive"),
    (["demo", "variant=bogus"], r"variant must be 'optax' or 'algoperf'"),
    (["demo", "preset=nadamw-list/9"], r"UnknownPresetError: Unknown NAdamW preset 'nadamw-list/9'"),
    (["demo", "preset=nonexistent"], r"Unknown NAdamW preset 'nonexistent'"),
    (["demo", "preset={d}/nonexistent.yaml#1"], r"nonexistent.yaml' does not exist"),
    (["demo", "preset={d}/mylist.yaml#x"], r"the rank after '#' must be an integer, got 'x'"),
    (["demo", "preset={d}/mylist.yaml#9"], r"has ranks 1..2; got 9"),
    (["demo", "{d}/malformed.yaml"], r"is not valid YAML"),
    # sweep
    (["sweep", "digits_demo", "--top", "1", "trainer.max_epochs=abc"], r"trainer.max_epochs='abc' has the wrong type"),
    (["sweep", "--top", "1", "foo=bar"], r"Bad demo recipe key 'foo'"),
    (["sweep", "--top", "1", "mode=up"], r"mode must be 'min' or 'max'"),
    (["sweep", "--top", "1", "trainer={}"], r"needs trainer.max_epochs"),
    (["sweep", "--top", "0"], r"top must be an integer in 1..5"),
    (["sweep", "--top", "99"], r"top must be an integer in 1..5"),
    (["sweep", "--top", "1", "--parallel", "0"], r"parallel must be an integer >= 1"),
    (["sweep", "--list", "{d}/nonexistent.yaml"], r"nonexistent.yaml' does not exist"),
    (["sweep", "--list", "{d}/malformed.yaml"], r"not valid YAML"),
    (["sweep", "--executor", "spark"], r"invalid choice: 'spark'"),
    # lists, presets, bench
    (["lists", "build", "--csv", "{d}/t.csv", "-k", "1", "-o", "/nonexistent/x/o.yaml"],
     r"FileNotFoundError: .*/nonexistent/x/o.yaml"),
    (["lists", "build", "--csv", "{d}/nonexistent.csv", "-o", "{d}/o.yaml"], r"nonexistent.csv"),
    (["lists", "build", "--csv", "{d}/t.csv", "--study", "{d}", "-o", "{d}/o.yaml"], r"exactly one source"),
    (["lists", "build", "--study", "{d},target=abc", "-o", "{d}/o.yaml"], r"--study"),
    (["lists", "build", "--csv", "{d}/t.csv", "-k", "0", "-o", "{d}/o.yaml"], r"\b[Kk]\b"),
    (["presets", "--list", "{d}/nonexistent.yaml"], r"nonexistent.yaml' does not exist"),
    (["presets", "--list", "{d}/malformed.yaml"], r"not valid YAML"),
    (["bench", "report", "--preamble", "{d}/nonexistent.md", "--out", "{d}/nobench"], r"nonexistent.md"),
    (["bench", "run", "--methods", "bogus", "--out", "{d}/nobench"], r"Unknown method\(s\) \['bogus'\]"),
]

_ONE_LINE = re.compile(r"^fms-lightning(?: [a-z]+)*: error: (?:[A-Z][A-Za-z]+(?:Error|Exception): )?\S")


@pytest.mark.parametrize(("n", "argv", "match"), [(n, a, m) for n, (a, m) in enumerate(BAD_LINES)],
                         ids=[" ".join(a)[:60] or "(nothing)" for a, _ in BAD_LINES])
def test_a_bad_command_line_is_one_named_line_and_exit_2(d, capsys, n, argv, match) -> None:
    argv = [a.replace("{d}", str(d)).replace("{n}", str(n)) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (argv, status, err[-2000:])
    assert "Traceback" not in err + out
    assert len(lines) == 1, err
    assert _ONE_LINE.match(lines[0]), lines[0]
    assert "\x1b[" not in lines[0]
    assert re.search(match, lines[0]), lines[0]
    assert not (d / "PWNED").exists()  # the hostile hub ran nothing


def test_the_table_is_long_enough() -> None:
    assert len(BAD_LINES) >= 40


def test_errors_lose_terminal_colours_and_line_breaks(capsys, monkeypatch) -> None:
    from fms_lightning import cli
    from fms_lightning.errors import HubError

    def broken(args):
        raise HubError("Hub entry 'x': weights do not fit:\n\tMissing key(s) in \x1b[1mstate_dict\x1b[0m: " + "w" * 900)

    monkeypatch.setattr(cli.status, "_run", broken)
    assert main(["status", "anywhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and len(err) < 700
    assert err.startswith("fms-lightning: error: HubError: Hub entry 'x': weights do not fit: Missing key(s) in state_dict")
