"""The whole pipeline at its tiny size: build -> run -> report (CI)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fms_lightning.bench.build import build_benchmark, config_dir
from fms_lightning.bench.cli import register
from fms_lightning.bench.replay import RunResult, RunSettings, run_replay
from fms_lightning.bench.spec import bench_spec
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError, UnknownPresetError

SETTINGS = RunSettings(budget=8, tau_budgets=(4, 8), n_candidates=8, initial_steps=10, refine_steps=3,
                       pretrain_configs=2, pretrain_steps=5)


def _built(tmp_path_factory: pytest.TempPathFactory, hub: str, tasks: tuple[str, ...]) -> Path:
    """A cache holding the tiny benchmarks of ``hub`` for ``tasks``."""
    root = tmp_path_factory.mktemp(f"{hub}-cache")
    for task in tasks:
        build_benchmark(bench_spec(hub, task, "tiny"), root, progress=False)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built(tmp_path_factory, "cnn", ("mirror", "rotate"))


def test_cache_is_complete(cache: Path) -> None:
    spec = bench_spec("cnn", "mirror", "tiny")
    bench = Benchmark(cache / spec.name)
    assert bench.curves.shape == (len(spec.configs()), spec.epochs)
    assert np.all((bench.curves >= 0) & (bench.curves <= 1))
    for k in range(len(bench.configs)):
        assert bench.index(bench.configs[k]) == k
        for e in range(spec.epochs + 1):
            assert set(bench.snapshot(k, e)) == set(bench.model(bench.configs[k]).state_dict())
    with pytest.raises(ConfigurationError, match="not in benchmark"):
        bench.index({"hub": "nope"})


def test_killed_build_resumes(cache: Path, tmp_path: Path) -> None:
    spec = bench_spec("cnn", "mirror", "tiny")
    shutil.copytree(cache / spec.name, tmp_path / spec.name)
    (tmp_path / spec.name / "meta.json").unlink()  # as if killed before the end
    (config_dir(tmp_path / spec.name, 1) / "metrics.json").unlink()  # ... in the middle of config 1
    with pytest.raises(ConfigurationError, match="meta.json"):
        Benchmark(tmp_path / spec.name)
    build_benchmark(spec, tmp_path, progress=False)
    np.testing.assert_allclose(Benchmark(tmp_path / spec.name).curves, Benchmark(cache / spec.name).curves)


@pytest.mark.parametrize("variant", ["random", "gp", "dyhpo", "dyhpo-horizon", "fms-flat-nocurve", "fms-gmn",
                                     "fms-gmn-horizon", "fms-gmn-frozen", "fms-gmn-full"])
def test_replay_integrity(cache: Path, variant: str) -> None:
    bench = Benchmark(cache / "cnn-mirror-tiny")
    result = run_replay(bench, variant, seed=3, settings=SETTINGS)
    regret = np.array(result.regret)
    assert regret.shape == (SETTINGS.budget,)
    assert np.all(np.diff(regret) <= 1e-12) and np.all(regret >= 0)
    assert set(result.tau) == {4, 8}
    assert all(-1.0 <= t <= 1.0 for t in result.tau.values())
    assert RunResult.from_json(result.to_json()) == result
    # the budget is spread over the trials exactly (the last one may be cut short by the budget)
    assert len(result.epochs_per_trial) == result.n_trials and sum(result.epochs_per_trial) >= SETTINGS.budget
    assert sum(result.epochs_per_trial[:-1]) < SETTINGS.budget


def test_replay_rejects_unknown_variant_and_bad_transfer(cache: Path) -> None:
    bench = Benchmark(cache / "cnn-mirror-tiny")
    with pytest.raises(UnknownPresetError, match="expected one of"):
        run_replay(bench, "bohb", 0, SETTINGS)
    with pytest.raises(ConfigurationError, match="transfer"):
        run_replay(bench, "random", 0, SETTINGS, pretrain_from=Benchmark(cache / "cnn-rotate-tiny"))


def test_cli_run_and_report(cache: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out, md = tmp_path / "runs", tmp_path / "BENCH.md"
    common = ["--size", "tiny", "--hub", "cnn", "--cache", str(cache)]
    args = parser.parse_args(["bench", "run", *common, "--task", "mirror", "--methods", "random", "dyhpo",
                              "--seeds", "2", "--budget", "8", "--candidates", "8", "--initial-steps", "10",
                              "--refine-steps", "3", "--transfer", "--pretrain-steps", "5", "--out", str(out)])
    assert args.func(args) == 0
    files = sorted(p.name for p in (out / "cnn-mirror-tiny").glob("*.json"))
    assert files == [f"{v}-seed{s}.json" for v in ("dyhpo", "fms-gmn+transfer", "random") for s in (0, 1)]
    first = json.loads((out / "cnn-mirror-tiny" / "dyhpo-seed0.json").read_text())
    assert args.func(args) == 0  # resumable: existing runs are kept
    assert json.loads((out / "cnn-mirror-tiny" / "dyhpo-seed0.json").read_text()) == first
    args = parser.parse_args(["bench", "report", "--out", str(out), "--cache", str(cache), "--report", str(md),
                              "--plots", str(tmp_path / "plots")])
    assert args.func(args) == 0
    text = md.read_text()
    assert "cnn-mirror-tiny" in text and "| dyhpo |" in text and "fms-gmn+transfer" in text
    assert (tmp_path / "plots" / "regret-cnn-mirror-tiny.png").stat().st_size > 0


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built(tmp_path_factory, "zoo", ("mirror", "fewshot"))


def test_zoo_members_differ(zoo_cache: Path) -> None:
    bench = Benchmark(zoo_cache / "zoo-mirror-tiny")
    members = list(bench.members)
    assert len(members) >= 3 and set(bench.recipes) == set(members)
    starts = [bench.starting_weights({"hub": m}) for m in members]
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            assert any(not torch.equal(starts[i][n], starts[j][n]) for n in starts[i]), (members[i], members[j])
    recipes = list(bench.recipes.values())
    for key in ("seed", "init_scale", "lr", "weight_decay", "dropout", "epochs", "data_fraction", "label_noise"):
        assert len({r[key] for r in recipes}) > 1, key
    assert min(r["epochs"] for r in recipes) == 0 < max(r["epochs"] for r in recipes)
    assert max(r["pretrain_val_acc"] for r in recipes) - min(r["pretrain_val_acc"] for r in recipes) > 0.3
    best = bench.final.reshape(len(members), -1).max(axis=1)  # best over the grid, per member
    assert best.max() - best.min() > 0.05  # members fine-tune differently
    other = Benchmark(zoo_cache / "zoo-fewshot-tiny")  # same members in every task (transfer needs it)
    assert other.recipes == bench.recipes and other.space == bench.space
    for m in members:
        a, b = bench.starting_weights({"hub": m}), other.starting_weights({"hub": m})
        assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("name", ["zoo-mirror-tiny", "zoo-fewshot-tiny"])
def test_zoo_cache_has_every_snapshot_and_training_time(zoo_cache: Path, name: str) -> None:
    spec = bench_spec(*name.split("-"))
    bench = Benchmark(zoo_cache / name)
    assert bench.curves.shape == bench.epoch_seconds.shape == (len(spec.configs()), spec.epochs)
    assert np.all(np.isfinite(bench.epoch_seconds)) and np.all(bench.epoch_seconds > 0)
    keys = set(bench.model(bench.configs[0]).state_dict())
    for k in (0, len(bench.configs) - 1):
        snaps = [bench.snapshot(k, e) for e in range(spec.epochs + 1)]
        assert all(set(s) == keys for s in snaps)
        for e in range(spec.epochs):  # the weights move every epoch: each file is that epoch's
            assert any(not torch.equal(snaps[e][n], snaps[e + 1][n]) for n in keys), (k, e)


def test_epoch_seconds_of_old_caches(cache: Path, tmp_path: Path) -> None:
    spec = bench_spec("cnn", "mirror", "tiny")
    bench = Benchmark(cache / spec.name)
    assert bench.epoch_seconds.shape == (len(spec.configs()), spec.epochs) and np.all(bench.epoch_seconds > 0)
    old = tmp_path / spec.name
    shutil.copytree(cache / spec.name, old)
    path = config_dir(old, 2) / "metrics.json"
    rec = json.loads(path.read_text())
    del rec["epoch_seconds"]
    path.write_text(json.dumps(rec))
    old_bench = Benchmark(old)
    np.testing.assert_allclose(old_bench.curves, bench.curves)  # the rest still loads
    with pytest.raises(ConfigurationError, match="epoch_seconds"):
        old_bench.epoch_seconds


def test_old_per_epoch_snapshot_files_still_load(cache: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from fms_lightning.bench.build import read_snapshot

    spec = bench_spec("cnn", "mirror", "tiny")
    shutil.copytree(cache / spec.name, tmp_path / spec.name)
    cdir = config_dir(tmp_path / spec.name, 1)
    for e in range(1, spec.epochs + 1):  # the layout of caches built before snapshots were packed
        save_file(read_snapshot(cdir, e), str(cdir / f"epoch_{e:03d}.safetensors"))
    (cdir / "snapshots.safetensors").unlink()
    old, new = Benchmark(tmp_path / spec.name), Benchmark(cache / spec.name)
    for e in range(spec.epochs + 1):
        a, b = old.snapshot(1, e), new.snapshot(1, e)
        assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("variant", ["random", "fms-flat", "fms-gmn"])
def test_zoo_replay(zoo_cache: Path, variant: str) -> None:
    bench = Benchmark(zoo_cache / "zoo-fewshot-tiny")
    result = run_replay(bench, variant, seed=1, settings=SETTINGS)
    regret = np.array(result.regret)
    assert regret.shape == (SETTINGS.budget,) and np.all(np.diff(regret) <= 1e-12) and np.all(regret >= 0)
    assert result.best_config["hub"] in bench.members


def test_cli_zoo_build_run_report(zoo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    common = ["--size", "tiny", "--hub", "zoo", "--task", "fewshot", "--cache", str(zoo_cache)]
    args = parser.parse_args(["bench", "build", *common, "--quiet"])
    assert args.func(args) == 0  # already built: returns at once, and reports how easy it is
    assert "zoo-fewshot-tiny: ready" in capsys.readouterr().out
    out, md = tmp_path / "runs", tmp_path / "BENCH.md"
    args = parser.parse_args(["bench", "run", *common, "--methods", "random", "fms-flat", "--seeds", "1",
                              "--budget", "8", "--candidates", "8", "--initial-steps", "10", "--refine-steps", "3",
                              "--out", str(out)])
    assert args.func(args) == 0
    assert sorted(p.name for p in (out / "zoo-fewshot-tiny").glob("*.json")) == ["fms-flat-seed0.json",
                                                                                 "random-seed0.json"]
    args = parser.parse_args(["bench", "report", "--out", str(out), "--cache", str(zoo_cache), "--report", str(md),
                              "--plots", str(tmp_path / "plots")])
    assert args.func(args) == 0
    text = md.read_text()
    assert "zoo-fewshot-tiny" in text and "| fms-flat |" in text and "Simple CNN Hub" in text
