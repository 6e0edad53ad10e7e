"""Optuna peers in the cached benchmark, and the simulated wall time of every run (tiny size)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fms_lightning.bench.build import build_benchmark
from fms_lightning.bench.cli import register
from fms_lightning.bench.peers import budget_startup_trials, is_peer, peer_variants, require_optuna
from fms_lightning.bench.replay import RunResult, RunSettings, epoch_costs, run_replay
from fms_lightning.bench.spec import bench_spec
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError, UnknownPresetError

if not os.environ.get("CI"):  # CI installs the bench extra (make test), so a missing Optuna fails there
    pytest.importorskip("optuna", reason="the Optuna peers need the bench extra: pip install -e '.[bench]'")

PEERS = ["tpe-hyperband", "tpe-hyperband-s2", "tpe", "tpe-s2", "sh"]


class _Timed(Benchmark):
    """The tiny benchmark with per-epoch training seconds that identify the (config, epoch) trained."""

    epoch_seconds = None

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        n, e = self.curves.shape
        self.epoch_seconds = (np.arange(n)[:, None] + 1.0) + (np.arange(e)[None, :] + 1.0) / 100.0


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Benchmark:
    root = tmp_path_factory.mktemp("bench-cache")
    return Benchmark(build_benchmark(bench_spec("cnn", "mirror", "tiny"), root, progress=False))


def _trained(b: _Timed, result: RunResult) -> list[tuple[int, int]]:
    """The (config, epoch) trained at each epoch of budget, decoded from the cumulative training seconds."""
    steps = np.diff(np.concatenate([[0.0], result.train_seconds_at_epoch]))
    out = []
    for s in steps:
        k, e = np.argwhere(np.isclose(b.epoch_seconds, s, atol=1e-4))[0]
        out.append((int(k), int(e) + 1))
    return out


@pytest.mark.parametrize("variant", PEERS)
def test_peer_spends_the_budget_exactly(bench: Benchmark, variant: str) -> None:
    settings = RunSettings(budget=23, tau_budgets=(23,))  # not a multiple of E = 4: stops inside a trial
    timed = _Timed(bench.folder)
    result = run_replay(timed, variant, seed=0, settings=settings)
    assert len(result.regret) == len(result.overhead_at_epoch) == len(result.train_seconds_at_epoch) == 23
    regret = np.array(result.regret)
    assert np.all(np.diff(regret) <= 1e-12) and np.all(regret >= 0)
    assert np.all(np.diff(result.overhead_at_epoch) >= 0) and result.overhead_at_epoch[-1] <= result.overhead_seconds + 1e-4
    assert result.tau == {} and result.train_seconds_source == "cache"
    trained = _trained(timed, result)
    # Each trial trains epochs 1, 2, ... in order; the value observed is the cache's.
    for (k0, e0), (k1, e1) in zip(trained, trained[1:]):
        assert e1 == 1 or (k1 == k0 and e1 == e0 + 1)
    values = [timed.curves[k, e - 1] for k, e in trained]
    np.testing.assert_allclose(regret, timed.best_possible - np.maximum.accumulate(values))
    assert sum(e == 1 for _, e in trained) == result.n_trials


@pytest.mark.parametrize(("variant", "pruned"), [("tpe-hyperband", True), ("sh", True), ("tpe", False)])
def test_pruned_trials_count_the_epochs_they_trained(bench: Benchmark, variant: str, pruned: bool) -> None:
    timed = _Timed(bench.folder)
    result = run_replay(timed, variant, seed=0, settings=RunSettings(budget=24, tau_budgets=(24,)))
    trained = _trained(timed, result)
    starts = [i for i, (_, e) in enumerate(trained) if e == 1] + [len(trained)]
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    assert sum(lengths) == 24
    if pruned:  # some trial stopped before E = 4 epochs, and its epochs still count
        assert min(lengths[:-1]) < timed.epochs and result.n_trials > 24 // timed.epochs
    else:
        assert lengths == [timed.epochs] * 6 and result.n_trials == 6


@pytest.mark.parametrize("variant", ["tpe-hyperband", "tpe-s2", "sh"])
def test_peer_is_deterministic_for_a_seed(bench: Benchmark, variant: str) -> None:
    settings = RunSettings(budget=16, tau_budgets=(16,))
    runs = [run_replay(bench, variant, seed=s, settings=settings) for s in (5, 5, 6, 7, 8)]
    same = ("regret", "n_trials", "best_config", "train_seconds_at_epoch")
    assert all(getattr(runs[0], f) == getattr(runs[1], f) for f in same)
    assert len({(r.regret, r.n_trials) for r in runs[1:]}) > 1  # the seed matters


@pytest.mark.parametrize("variant", ["random", "dyhpo"])
def test_fms_replay_records_overhead_and_training_time_per_epoch(bench: Benchmark, variant: str) -> None:
    settings = RunSettings(budget=8, tau_budgets=(8,), n_candidates=8, initial_steps=10, refine_steps=3)
    result = run_replay(bench, variant, seed=1, settings=settings)
    assert len(result.overhead_at_epoch) == len(result.train_seconds_at_epoch) == 8
    assert np.all(np.diff(result.overhead_at_epoch) >= 0) and np.all(np.diff(result.train_seconds_at_epoch) > 0)
    assert result.overhead_at_epoch[-1] <= result.overhead_seconds + 1e-4
    if variant == "dyhpo":
        assert result.overhead_at_epoch[-1] > 0
    costs, source = epoch_costs(bench)  # the build measured every epoch's training seconds
    assert source == result.train_seconds_source == "cache" and costs.shape == bench.curves.shape
    steps = np.diff(np.concatenate([[0.0], result.train_seconds_at_epoch]))
    assert all(np.isclose(costs, d, rtol=1e-3, atol=1e-4).any() for d in steps)  # each epoch costs a cached epoch
    wall = result.wall_seconds_at_epoch
    np.testing.assert_allclose(wall, np.add(result.train_seconds_at_epoch, result.overhead_at_epoch))


def test_old_json_without_the_new_fields_still_loads(bench: Benchmark) -> None:
    result = run_replay(bench, "sh", seed=0, settings=RunSettings(budget=8, tau_budgets=(8,)))
    assert RunResult.from_json(result.to_json()) == result
    old = json.loads(result.to_json())
    for key in ("overhead_at_epoch", "train_seconds_at_epoch", "train_seconds_source"):
        del old[key]
    old["field_of_a_later_version"] = 1
    loaded = RunResult.from_json(json.dumps(old))
    assert loaded.regret == result.regret and loaded.overhead_at_epoch == () and loaded.wall_seconds_at_epoch == ()


def test_peer_names_and_rules(bench: Benchmark) -> None:
    assert budget_startup_trials(100, 10) == 2 and budget_startup_trials(1000, 10) == 25
    assert peer_variants(100, 20) == PEERS
    assert all(is_peer(v) for v in [*PEERS, "tpe-s7"]) and not any(is_peer(v) for v in ["sh-s2", "tpe-s0", "dyhpo"])
    with pytest.raises(UnknownPresetError, match="Optuna peer"):
        run_replay(bench, "tpe-hyperband-s0", 0)
    with pytest.raises(ConfigurationError, match="transfer"):
        run_replay(bench, "tpe", 0, pretrain_from=bench)


def test_optuna_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("import sys, fms_lightning, fms_lightning.bench, fms_lightning.bench.peers, fms_lightning.bench.cli; "
            "assert 'optuna' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"fms-lightning\[bench\]"):
        require_optuna()


def test_cli_runs_the_peers_and_reports_wall_time(bench: Benchmark, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out, md, plots = tmp_path / "runs", tmp_path / "BENCH.md", tmp_path / "plots"
    cache = str(bench.folder.parent)
    args = parser.parse_args(["bench", "run", "--size", "tiny", "--hub", "cnn", "--task", "mirror", "--cache", cache,
                              "--methods", "random", "peers", "--seeds", "2", "--budget", "8", "--out", str(out)])
    assert args.func(args) == 0
    files = sorted(p.name for p in (out / bench.name).glob("*.json"))
    assert files == sorted(f"{v}-seed{s}.json" for v in ["random", *peer_variants(8, bench.epochs)] for s in (0, 1))
    args = parser.parse_args(["bench", "report", "--out", str(out), "--cache", cache, "--report", str(md),
                              "--plots", str(plots)])
    assert args.func(args) == 0
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tpe-hyperband |"))
    assert row.split(" | ")[2:4] == ["–", "–"]  # no τ for a peer
    assert "regret@25" in text and "Easiness of `cnn-mirror-tiny`" in text
    assert "random's 8 epochs" in text and "constant" not in text  # the cache has per-epoch seconds
    assert (plots / f"regret-time-{bench.name}.png").stat().st_size > 0
    with pytest.raises(UnknownPresetError, match="Optuna peer"):
        bad = parser.parse_args(["bench", "run", "--size", "tiny", "--hub", "cnn", "--cache", cache,
                                 "--methods", "tpe-bohb", "--out", str(out)])
        bad.func(bad)
