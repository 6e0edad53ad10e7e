"""The whole pipeline at its tiny size: build -> run -> report (CI)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fms_lightning.bench.build import build_benchmark, config_dir
from fms_lightning.bench.cli import register
from fms_lightning.bench.replay import RunResult, RunSettings, run_replay
from fms_lightning.bench.spec import bench_spec
from fms_lightning.bench.table import Benchmark
from fms_lightning.errors import ConfigurationError, UnknownPresetError

SETTINGS = RunSettings(budget=8, tau_budgets=(4, 8), n_candidates=8, initial_steps=10, refine_steps=3,
                       pretrain_configs=2, pretrain_steps=5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-cache")
    for task in ("mirror", "rotate"):
        build_benchmark(bench_spec("cnn", task, "tiny"), root, progress=False)
    return root


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


@pytest.mark.parametrize("variant", ["random", "gp", "dyhpo", "fms-flat-nocurve", "fms-gmn", "fms-gmn-frozen", "fms-gmn-full"])
def test_replay_integrity(cache: Path, variant: str) -> None:
    bench = Benchmark(cache / "cnn-mirror-tiny")
    result = run_replay(bench, variant, seed=3, settings=SETTINGS)
    regret = np.array(result.regret)
    assert regret.shape == (SETTINGS.budget,)
    assert np.all(np.diff(regret) <= 1e-12) and np.all(regret >= 0)
    assert set(result.tau) == {4, 8}
    assert all(-1.0 <= t <= 1.0 for t in result.tau.values())
    assert RunResult.from_json(result.to_json()) == result


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
